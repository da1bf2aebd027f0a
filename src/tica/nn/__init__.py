"""Layers of the tica family: convolution stacks, GDN, Transformer blocks, FAM, integer h_s."""

"""The tica repository's tools, kept out of the library: training plans (`plan`), the
results report (`report`), the classical codecs the report compares (`classical`), BD-rate
and curve helpers (`rd`) and the benchmarks' timing helpers (`timing`)."""

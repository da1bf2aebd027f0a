"""Refit a trained codec's hyperprior (h_a, h_s and z's density) on its own frozen latents.

    python -m tica_tools.refit WEIGHTS DATA --minutes 30 [--steps N] --out refit.safetensors
                               [--hs-mid 96] [--hs-kernel 1] [--hs-first-kernel 3]
                               [--hs-mid-kernel 3]
                               [--lr 1e-3] [--threads 1] [--flat N]

Why this is cheap and exact: with g_a (and everything after y) frozen, the hyperprior's
parameters see only the rate. The distortion and the classifier read y + noise, or the
straight-through rounded y, whose gradient with respect to the predicted mean is zero
(`tica.entropy.quantize`), and the objective charges the rate with weight one at every rate
point (`tica.losses.rda_loss`). So training h_a, h_s and the z density on the bits of y and
z alone is the whole objective's gradient for them, and the latents y = g_a(x) of the
training images (each image and its mirror image) can be computed once and kept, in float16:
a step then costs the hyperprior's forward and backward passes, a small part of a full step.

`--flat N` adds the latents of N images of one uniform colour each (random colours, the
training images' size) to the photographs': a codec trained on photographs alone learns z's
density from textured latents, and a flat image, which should cost almost nothing, pays for
its side information what those densities give the flat latent's z (docs/design.md).

The h_s may take a new shape (`ModelConfig.hs_mid`, `hs_kernel`, `hs_first_kernel`,
`hs_mid_kernel`: fewer multiply-adds for the decoder's integer h_s); a layer whose shape is
kept starts from the trained one, a new one from scratch (`tica.train.state.transplant`).
The means still move the decoder's rounding offsets, so a refit model is scored like any
other: from real streams, with its accuracy (scripts/ship_weights.py --only-if-better).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tica.checkpoint import save_checkpoint
from tica.data import cache_dir, load_split, save_npy
from tica.entropy import quantize
from tica.io import atomic_write
from tica.models import CompressionModel
from tica.registry import load_checkpoint, weights_root
from tica.train.state import transplant
from tica_tools.plan.runner import source_commit

# what the refit trains: the hyperprior, not the rate gains (training's hyper group has
# them too, tica.train.objective._HYPER), which scale the latent the decoder sees
HYPER = ("h_a.", "h_s.", "entropy_bottleneck.")


@torch.no_grad()
def latents(model: CompressionModel, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """g_a's un-gained latents of uint8 images (n, 3, H, W) and of their mirror images,
    (2n, M, h, w) float16: the images first, then the mirrors."""
    model.eval()
    out = []
    for flip in (False, True):
        for i in range(0, len(images), batch):
            x = images[i:i + batch].float() / 255
            out.append(model.encode_latent(x.flip(-1) if flip else x, entropy=False)[0].half())
    return torch.cat(out)


def cached_latents(model: CompressionModel, data: str, split: str = "train") -> torch.Tensor:
    """`latents` of a data set's split, kept in the cache folder under g_a's weights (all
    the latents depend on: a refit model shares its source's) and the split's size and
    first images, so that the arms of a trial, and refits of refits, compute them once."""
    images = load_split(data, split).images
    g_a = b"".join(t.detach().float().cpu().numpy().tobytes()
                   for t in model.g_a.state_dict().values())
    key = hashlib.sha256(g_a + images[:64].numpy().tobytes()
                         + str(images.shape).encode()).hexdigest()[:12]
    path = cache_dir() / f"latents-{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    y = latents(model, images)
    atomic_write(path, lambda tmp: save_npy(tmp, y.numpy()))
    return y


def flat_images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """n uint8 images (n, 3, H, W), each of one uniformly random colour."""
    colours = torch.randint(256, (n, 3, 1, 1), generator=torch.Generator().manual_seed(seed))
    return colours.to(torch.uint8).expand(n, 3, *size).contiguous()


def shipped_file(path: str | Path) -> bool:
    """Whether `path` is one of the package's shipped weight files."""
    return Path(path).resolve().parent == weights_root().resolve()


def hyper_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(the hyperprior's parameters, z's density quantiles); every other one is frozen."""
    main, quantiles = [], []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(HYPER))
        if name.startswith(HYPER):
            (quantiles if name.endswith("quantiles") else main).append(p)
    return main, quantiles


def rate_bits(model: CompressionModel, y: torch.Tensor, quality: torch.Tensor | None
              ) -> torch.Tensor:
    """Bits of y and z per image (B,) for un-gained latents y at these qualities (B,), as
    training charges them: y + noise, z as the model's hyper proxy sees it (training mode).
    (Charging y's coded symbols instead, round(y - mu), tied with this in an equal-time
    trial: docs/design.md.)"""
    gain = model.gains(quality)[0] if quality is not None else None
    y, scales, means, z_lik = model.hyperprior(y, gain)
    y_lik = model.gaussian_conditional.likelihood(quantize(y, "noise"), scales, means)
    return sum(-torch.log2(lik).flatten(1).sum(1) for lik in (y_lik, z_lik))


def refit(model: CompressionModel, y: torch.Tensor, seconds: float, batch: int = 128,
          lr: float = 1e-3, warmup: int = 100, seed: int = 0, max_steps: int | None = None,
          log=None) -> dict:
    """Train the hyperprior on cached latents `y` for `seconds` of wall time (or `max_steps`,
    whichever ends first): Adam at `lr`, warmed up for `warmup` steps, then cosine-annealed
    to the end; each image at a rate point drawn from 1..L (a fixed-rate model at its own).
    The quantiles learn at 1e-3 on the auxiliary loss, as in training. Returns steps,
    latents seen and the mean bpp of the last 100 steps."""
    torch.manual_seed(seed)
    main, quantiles = hyper_parameters(model)
    optimizer = torch.optim.Adam([{"params": main, "lr": lr}, {"params": quantiles, "lr": 1e-3}])
    model.train()
    pixels = y.shape[-2] * y.shape[-1] * 4 ** model.config.stages     # of the images coded
    levels = model.config.rate_levels
    start, step, history = time.perf_counter(), 0, []
    while (progress := max((time.perf_counter() - start) / seconds,
                           step / max_steps if max_steps else 0.0)) < 1:
        group = optimizer.param_groups[0]
        group["lr"] = lr * min(1.0, (step + 1) / warmup) * (
            0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
        index = torch.randint(len(y), (batch,))
        quality = (torch.randint(levels, (batch,)) + 1).float() if levels else None
        bits = rate_bits(model, y[index].float(), quality)
        loss = bits.mean() / pixels
        optimizer.zero_grad(set_to_none=True)
        (loss + model.aux_loss()).backward()
        nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        history.append(loss.item())
        step += 1
        if log and step % 100 == 0:
            log({"step": step, "s": round(time.perf_counter() - start, 1),
                 "bpp": round(float(np.mean(history[-100:])), 4), "lr": group["lr"]})
    model.eval()
    model.update()
    return {"steps": step, "latents_seen": step * batch,
            "bpp_last_100": float(np.mean(history[-100:])) if history else math.nan}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="a trained codec (safetensors)")
    parser.add_argument("data", help="its training data (archive or folder; train split)")
    parser.add_argument("--out", required=True, help="where the refit model goes (float32)")
    parser.add_argument("--minutes", type=float, help="training wall time")
    parser.add_argument("--steps", type=int, help="or a number of steps (with both: whichever "
                        "ends first; the schedule follows the one further along)")
    parser.add_argument("--hs-mid", type=int, help="h_s's hidden width (ModelConfig.hs_mid)")
    parser.add_argument("--hs-kernel", type=int, help="h_s's last kernel (hs_kernel)")
    parser.add_argument("--hs-first-kernel", type=int,
                        help="h_s's first kernel, on z (hs_first_kernel)")
    parser.add_argument("--hs-mid-kernel", type=int,
                        help="h_s's transposed layer's kernel (hs_mid_kernel)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", type=int, default=0,
                        help="add the latents of N flat images of random colours")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes, --steps or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(args.weights).float()
    y = cached_latents(model, args.data)
    photographs = len(y) // 2
    if args.flat:
        size = tuple(side * 2 ** model.config.stages for side in y.shape[-2:])   # the images'
        y = torch.cat([y, latents(model, flat_images(args.flat, size, args.seed))])
    shape = {k: v for k, v in (("hs_mid", args.hs_mid), ("hs_kernel", args.hs_kernel),
                               ("hs_first_kernel", args.hs_first_kernel),
                               ("hs_mid_kernel", args.hs_mid_kernel)) if v is not None}
    if shape:                       # what is known of the weights stays theirs
        model, info = transplant(model, shape, args.seed), model.weights_info
        model.weights_info = info
    log_path = Path(args.out).with_suffix(".jsonl")
    log_path.unlink(missing_ok=True)

    def log(row: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    t0, commit = time.perf_counter(), source_commit()   # the code it runs, not the code at its end
    seconds = args.minutes * 60 if args.minutes is not None else math.inf
    stats = refit(model, y, seconds, args.batch, args.lr, seed=args.seed, max_steps=args.steps,
                  log=log)
    info = dataclasses.replace(model.weights_info, interim=False)
    save_checkpoint(model, args.out, info)
    what = ", ".join(f"{k} {v}" for k, v in shape.items()) or "h_s as it was"
    flat = f" and of {args.flat:,} flat images of random colours" if args.flat else ""
    lease = {"plan": "tools/tica_tools/refit.py", "commit": commit,
             "date": time.strftime("%Y-%m-%d"), "runs": [Path(args.out).stem],
             "where": "cpu", **({"init": "shipped"} if shipped_file(args.weights) else
                                {"init": "file", "init_file": str(args.weights)}),
             "minutes": round((time.perf_counter() - t0) / 60, 2), "steps": stats["steps"],
             "images_seen": 0, "latents_seen": stats["latents_seen"],
             "steps_note": f"hyperprior refit on the frozen latents of {photographs:,} "
                           f"training images and their mirrors{flat} ({what}): h_a, h_s and z's "
                           f"density on the rate alone, Adam {args.lr:g}, batch {args.batch}, "
                           f"cosine to the deadline, {stats['steps']:,} steps"}
    Path(args.out).with_suffix(".json").write_text(json.dumps(lease, indent=1) + "\n")
    print(json.dumps(lease))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

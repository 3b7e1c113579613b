"""How strong privmed's gradient inversion is, beside its nulls and its positive control.

On the default phantom (32x32) and the default CNN at initialisation, for a
few single training images: Inverting Gradients (Geiping et al. 2020:
cosine distance + total variation, Adam on the signed input gradient, step
decay at 3/8, 5/8, 7/8, boxed to [0, 1], restarts kept by gradient match;
breaching's ``attack=invertinggradients`` config: cosine similarity, signed
Adam at step 0.1, boxed, step-lr decay, 24 000 iterations, TV scale 0.2 on
the mean |dx| + |dy|, which is privmed's ``total_variation``) against

- the image's plain-SGD gradient (what FedSGD sends),
- one Adam step (what a privmed site sends after one step: lr * sign(g)),
- five local Adam steps on the same image (a multi-step update read as a gradient);

and the positive control, DLG (Zhu et al. 2019) on its own sigmoid LeNet.
Nulls printed with every row: a flat guess at the mean intensity and a
uniform random image.

Run: PYTHONPATH=. python benchmarks/inversion_strength.py [--iterations N] [--restarts R] [--images K]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from privmed.attacks import gradient_inversion as gi
from privmed.config import DataConfig
from privmed.engine.session import build_federation
from privmed.run import set_threads
from privmed.site import ModelSpec
from privmed.tasks import train_local


def row(label: str, s: dict, seconds: float) -> str:
    return (
        f"{label:28} | {s['psnr']:5.1f} dB  SSIM {s['ssim']:.3f} | flat {s['psnr_flat_guess']:5.1f} dB"
        f" SSIM {s['ssim_flat_guess']:.3f} | random {s['psnr_random_image']:4.1f} dB | {seconds:.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--tv", type=float, default=0.2)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="the site's local learning rate (privmed's default)")
    args = ap.parse_args()
    set_threads()
    fed = build_federation(DataConfig(), 0)
    train = fed.sites[0].train
    spec = ModelSpec("cnn", 1, fed.n_classes, "classification")
    ig = gi.InversionConfig(method="ig", iterations=args.iterations, lr=0.1, tv_weight=args.tv, restarts=args.restarts)
    print(f"IG: {args.iterations} iterations, {args.restarts} restarts, TV {args.tv}; phantom 32x32, default CNN")
    for i in range(args.images):
        x, y = torch.from_numpy(train.images[i : i + 1]), torch.from_numpy(train.labels[i : i + 1])
        model = spec.build(0)
        views = {"plain-SGD gradient": gi.model_gradient(model, x, y)}
        for steps in (1, 5):
            local = spec.build(0)
            sent = {k: v.clone() for k, v in local.state_dict().items()}
            train_local(local, train.subset([i]), task="classification", epochs=steps, batch_size=1, lr=args.lr)
            views[f"{steps} Adam step(s), as gradient"] = gi.update_to_gradient(
                model, sent, local.state_dict(), args.lr
            )
        for name, grad in views.items():
            labels = gi.infer_labels(grad, n_classes=fed.n_classes, batch_size=1)
            start = time.perf_counter()
            recon = gi.reconstruct(model, grad, shape=tuple(x.shape[1:]), labels=labels, config=ig)
            print(row(f"image {i}: {name}", gi.score_reconstruction(recon, x), time.perf_counter() - start), flush=True)
        lenet = gi.LeNetZhu(1, fed.n_classes, x.shape[-1], seed=0)
        grad = gi.model_gradient(lenet, x, y)
        start = time.perf_counter()
        cfg = dataclasses.replace(gi.PRESETS["dlg"], iterations=100, restarts=1)
        recon = gi.reconstruct(lenet, grad, shape=tuple(x.shape[1:]), labels=y, config=cfg)
        s = gi.score_reconstruction(recon, x)
        print(row(f"image {i}: control DLG/LeNet", s, time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main()

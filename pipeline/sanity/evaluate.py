"""``gvae evaluate``: the paper's metrics plus mode coverage and an in-domain FID.

Generated samples are compared with the real **test** split (never the training images):
MMD (Gaussian RBF, one bandwidth per dataset so every model is measured with the same kernel),
MS-SSIM among generated pairs (diversity), and through the pipeline's own classifier the class
histogram entropy, per-image entropy, FID and precision/recall (Kynkaenniemi 2019). Models with
an encoder also get reconstruction error, ELBO, KL and an importance-weighted log-likelihood
bound (Burda 2016), all in nats per image.

``--reference`` evaluates a held-out sample of real training images the same way, so every
table has the real-vs-real floor beside the models.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from common.atomic import write_json
from pipeline.params.loader import load_section
from pipeline.sanity.datasets import load_images


def _generated_metrics(gen: torch.Tensor, real: torch.Tensor, params, clf) -> dict:
    """Sample-quality metrics of ``gen`` (N, C, H, W) against ``real`` test images."""
    from models.eval import metrics as M
    from models.eval.classifier import features, predict_proba

    g = torch.Generator().manual_seed(params.seed)
    bandwidth = params.mmd_bandwidth or M.median_bandwidth(real)
    out = {
        "mmd": M.mmd(real, gen, bandwidth=bandwidth),
        "mmd_bandwidth": bandwidth,
        "ms_ssim": M.ms_ssim_diversity(gen, params.ms_ssim_pairs, generator=g),
    }
    out["mmd_x1e4"] = out["mmd"] * 1e4
    probs = predict_proba(clf, gen, batch_size=params.batch_size)
    cover = M.mode_coverage(probs)
    out["class_entropy"] = cover["class_entropy"]
    out["image_entropy"] = cover["mean_image_entropy"]
    out["class_histogram"] = [int(v) for v in cover["histogram"]]
    f_real = features(clf, real, batch_size=params.batch_size)
    f_gen = features(clf, gen, batch_size=params.batch_size)
    out["fid"] = M.fid(f_real, f_gen)
    pr = M.precision_recall(f_real, f_gen, k=params.pr_k)
    out["precision"], out["recall"] = pr["precision"], pr["recall"]
    return out


def _encoder_metrics(model, real: torch.Tensor, params) -> dict:
    """Reconstruction error, ELBO, KL and the IWAE bound on the first ``iw_images`` test images."""
    from models.eval import metrics as M

    g = torch.Generator().manual_seed(params.seed)
    x = real[: params.iw_images]
    elbo = M.elbo_and_kl(model, x, generator=g, batch_size=params.batch_size)
    return {
        "recon_mse": M.reconstruction_error(model, x, batch_size=params.batch_size),
        "elbo": elbo["elbo"],
        "kl": elbo["kl"],
        "log_likelihood": M.iwae_bound(model, x, k=params.iw_samples, generator=g),
        "iw_samples": params.iw_samples,
    }


def run(
    params_path: Path,
    dataset: str,
    data_dir: Path,
    clf_dir: Path,
    out: Path,
    samples_dir: Path | None = None,
    run_dir: Path | None = None,
    reference: bool = False,
) -> dict:
    """Compute the metrics of one model (or of the real reference) and write ``out``."""
    from models.eval.classifier import load_classifier

    params = load_section(params_path, "evaluate")
    torch.manual_seed(params.seed)
    t0 = time.perf_counter()
    # A seeded random subset, not the first n: MNIST's test file is ordered by writer group,
    # and its two halves alone differ by an in-domain FID of about 30.
    real = _random_subset(load_images(dataset, data_dir, "test")[0], params.n_samples, params.seed)
    clf = load_classifier(clf_dir / "classifier.pt")
    if reference:
        pool = load_images(dataset, data_dir, "train")[0]
        gen = _random_subset(pool, params.n_samples, params.seed + 1)
        result = {"model": "real (train vs test)"}
    else:
        if samples_dir is None:
            raise ValueError("--samples is required unless --reference is given")
        gen = torch.as_tensor(np.load(samples_dir / "samples.npz")["images"])
        # Without a run folder only the samples folder names the model; with one, the
        # checkpoint does (run folders are named by their seed: s0, s1, ...).
        result = {"model": samples_dir.name}
    result.update({"dataset": dataset, "n_samples": int(len(gen))})
    result.update(_generated_metrics(gen, real, params, clf))
    if run_dir is not None and not reference:
        from models.train.checkpoint import load_checkpoint

        model = load_checkpoint(run_dir / "checkpoint.pt")
        result["model"] = model.name
        result["has_encoder"] = bool(model.has_encoder)
        if model.has_encoder:
            result.update(_encoder_metrics(model, real, params))
        result["stability"] = stability(run_dir, clf, params)
    result["classifier_test_accuracy"] = _classifier_accuracy(clf_dir)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out, result)
    return result


def stability(run_dir: Path, clf, params) -> dict | None:
    """Diversity during training: class entropy of every snapshot the trainer saved.

    Reads ``run_dir/samples/step-XXXXXX.npz`` (``train.snapshot_samples``); returns None when
    the run saved none, else the steps, the normalised class entropy (``class_entropy / log K``)
    of each snapshot and the mode-collapse verdict of ``models.eval.metrics.entropy_collapse`` on
    the snapshots after ``evaluate.collapse.warmup`` of the steps (``judged_from``: the first
    step judged).
    """
    from models.eval import metrics as M
    from models.eval.classifier import predict_proba

    files = sorted((run_dir / "samples").glob("step-*.npz"))
    if not files:
        return None
    steps, values = [], []
    for path in files:
        images = torch.as_tensor(np.load(path)["images"].astype(np.float32))
        cover = M.mode_coverage(predict_proba(clf, images, batch_size=params.batch_size))
        steps.append(int(path.stem.split("-")[1]))
        values.append(cover["class_entropy"] / cover["max_class_entropy"])
    judged = [i for i, step in enumerate(steps) if step > params.collapse.warmup * steps[-1]]
    verdict = M.entropy_collapse(
        [values[i] for i in judged], params.collapse.drop, [f"step {steps[i]}" for i in judged]
    )
    return {
        "steps": steps,
        "class_entropy_norm": values,
        "judged_from": steps[judged[0]],
        **verdict,
    }


def _random_subset(x, n: int, seed: int) -> torch.Tensor:
    """Return ``n`` rows of ``x`` drawn without replacement, reproducibly for ``seed``."""
    x = torch.as_tensor(x)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx]


def _classifier_accuracy(clf_dir: Path) -> float | None:
    import json

    path = clf_dir / "metrics.json"
    return json.loads(path.read_text()).get("test_accuracy") if path.is_file() else None

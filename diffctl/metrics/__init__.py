"""Evaluation metrics, chosen by name in ``diffctl eval metrics=[...]``.

``registry``: the registry (``METRICS``), what a metric is given (``EvalContext``) and when it applies;
``distances``: distances between sample sets and their error bars; ``reference``: the reference
classifier of an image dataset.  The metrics, by theme:

    denoising            test_loss, vlb, ode_nll       the denoiser on the test split, once per checkpoint
    reference_features   fd_ref, kid_ref, prdc_ref,    in the features of the dataset's reference classifier
                         cond_acc
    data_space           swd, mmd, energy, logp_true   in data space (2-D points; a known density)
    inception            fid, kid, is                  in torch-fidelity's Inception features (weights on disk)
    image_quality        sr_psnr, sr_ssim,             super-resolution against the real images (task=superres)
                         sr_consistency

Every result dict carries its sample count and metric version; sample-quality numbers carry the
real-vs-real floor measured at the same sample count, and ``err`` / ``floor_err``: standard
errors over the generated / held-out items (grouped jackknife for smooth statistics, bootstrap
for the k-NN ones).
"""

# importing a module registers its metrics; this order is the registry's (and configs/eval.yaml's)
from . import denoising, reference_features, inception, data_space, image_quality  # noqa: F401,I001
from .registry import METRICS, EvalContext, Skipped, skip_reason

__all__ = ["METRICS", "EvalContext", "Skipped", "skip_reason"]

# tiny_regressor.py with the real training loader: build_detection_train_loader over dataset dicts
# (TrainingSampler, aspect-ratio grouping on two orientations, numpy-noise "augmentation" seeded per
# sample), for tests of exact resume, multi-process equivalence, determinism and fault handling.
from detrex.config import LazyCall as L
from detrex.data.build import build_detection_train_loader
from detrex.utils.testing import TinyRegressionMapper, tiny_regression_dicts

from .tiny_regressor import dataloader, lr_multiplier, model, optimizer, train

dataloader.train = L(build_detection_train_loader)(
    dataset=L(tiny_regression_dicts)(num_samples=32, seed=0, nan_ids=[], image_root=None),
    mapper=L(TinyRegressionMapper)(noise=0.05, on_bad_image="raise"),
    total_batch_size=8,
    aspect_ratio_grouping=True,
    num_workers=0,
    seed=0,
    skip_bad_images=False,
    max_bad_image_fraction=0.01,
)

train.max_iter = 24
train.seed = 7
train.deterministic = True
train.checkpointer.period = 2
train.checkpointer.max_to_keep = 4
train.eval_period = 8
train.log_period = 1
train.output_dir = "./output/tiny_loader"
# EMA on (its state must survive resumes; evaluation reports the EMA weights' results)
train.model_ema.enabled = True
train.model_ema.decay = 0.8

# fault injection / pacing knobs of TinyRegressor (off)
model.step_sleep = 0.0
model.exit_at_iter = -1
model.exit_rank = 1
model.fault = "exit"

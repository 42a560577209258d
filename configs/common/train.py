# Training defaults shared by every config: `from detrex.config import get_config;
# train = get_config("common/train.py").train`, then override keys in the project config.
#
# `device="cuda"`: tools/train_net.py falls back to "cpu" (one warning) when CUDA is not
# available, so the same config runs on a CPU-only machine; set train.device=cpu to force it.
train = dict(
    # Directory for log.txt, config.yaml, metrics.json, TensorBoard events and checkpoints
    output_dir="./output",
    # Weights loaded before training (or evaluated with --eval-only); "" = from scratch.
    # detectron2://... names are read from $DETREX_WEIGHTS (default ~/.cache/detrex/weights)
    init_checkpoint="",
    # How strictly init_checkpoint must fit the model: "auto" fails when nothing fits or more than
    # half of the checkpoint's keys are unexpected/mis-shaped (another architecture) and warns about
    # the rest (e.g. an ImageNet backbone without detector heads); "exact" fails on any mismatch;
    # "partial" only warns (detectron2's behaviour)
    init_checkpoint_match="auto",
    max_iter=90000,
    # Mixed precision: dtype "float16" (GradScaler on CUDA) or "bfloat16" (CPU and CUDA). weight_copies
    # (bfloat16, one process): the forward uses bfloat16 copies of the Linear/Conv weights refreshed once
    # per step, instead of autocast casting every weight and gradient every iteration (same arithmetic)
    amp=dict(enabled=False, dtype="float16", weight_copies=True),
    # Options for DistributedDataParallel
    ddp=dict(
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    # Gradient-norm clipping (torch.nn.utils.clip_grad_norm_ kwargs)
    clip_grad=dict(
        enabled=False,
        params=dict(
            max_norm=0.1,
            norm_type=2,
        ),
    ),
    # train.seed + rank seeds every RNG; < 0 draws a random seed (logged)
    seed=-1,
    # Deterministic kernels (torch.use_deterministic_algorithms); with a fixed seed and the same
    # thread count (OMP_NUM_THREADS), CPU runs repeat bit-exactly. Some CUDA ops have no
    # deterministic kernel and then raise.
    deterministic=False,
    # A NaN/inf loss raises (naming the loss, iteration and image ids) unless this is True: then
    # the batch is skipped (no optimizer step) and counted ("nonfinite_skipped" in metrics.json)
    skip_nonfinite_loss=False,
    # Activation checkpointing: every encoder and decoder layer (KS triple-attention layers included)
    # keeps only its inputs in the forward pass and recomputes its activations in backward
    # (torch.utils.checkpoint, non-reentrant; dropout masks are replayed, gradients unchanged). Saves
    # memory for about one extra forward pass of the transformer; see bench/README.md for the figures
    activation_checkpoint=False,
    # torch.compile of the detector's forward_raw (backbone to heads; the criterion stays eager), for
    # training and evaluation. Dynamic shapes: one graph for every image size and box count (see
    # detrex/engine/compile.py); the first iteration compiles (about a minute on a GPU)
    compile=False,
    compile_kwargs=dict(backend="inductor", dynamic=True),
    # Smoke test: max_iter=20, eval_period=10, log_period=1
    fast_dev_run=dict(enabled=False),
    # Periodic checkpoints model_{iter:07d}.pth; model_final.pth is always written at the end
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    log_period=20,
    # Weights & Biases logging (not implemented by detrex's train_net: kept for config parity)
    wandb=dict(
        enabled=False,
        params=dict(
            dir="./wandb_output",
            project="detrex",
            name="detrex_experiment",
        ),
    ),
    # Exponential moving average of the weights ("" device = the model's device)
    model_ema=dict(
        enabled=False,
        decay=0.999,
        device="",
        use_ema_weights_for_eval_only=False,
    ),
    # "cuda" or "cpu"; the model and batches are moved there
    device="cuda",
)

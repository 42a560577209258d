# Fixture: a detrex-like `train` node (plain dict; becomes a DictConfig when imported by another config).
train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=100,
    lr=1e-4,
    seed=-1,
    device="cuda",
    amp=dict(enabled=False),
    lst=[1, 2, 3],
    milestones=None,
    name="run",
)

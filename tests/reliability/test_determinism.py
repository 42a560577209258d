"""With a fixed ``train.seed`` and ``train.deterministic=True``, two CPU runs give identical losses.

The first run is the session's baseline subprocess; the second runs train_net in this process."""
import pytest
import torch

from reliability_utils import LOADER_CONFIG, by_iter, import_train_net, metrics


@pytest.mark.slow
def test_two_runs_give_identical_losses_for_the_first_20_iterations(loader_baseline, tmp_path):
    out = tmp_path / "again"
    torch.manual_seed(1234)  # a different starting state: the run must reseed everything itself
    old, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)  # as the baseline (OMP_NUM_THREADS=1): reduction order depends on it
    try:
        import_train_net().cli(["--config-file", str(LOADER_CONFIG), f"train.output_dir={out}"])
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(old)
        torch.set_num_threads(threads)
    a, b = metrics(loader_baseline), metrics(out)
    for key in ("total_loss", "loss_mse", "loss_l1", "tiny/objective"):
        first, second = by_iter(a, key), by_iter(b, key)
        for it in range(20):
            assert second[it] == first[it], (key, it)  # bit-identical


def _shapes_like_batches(step):
    """Two synthetic images with boxes; the content depends only on the step."""
    from detrex.structures import Boxes, Instances

    g = torch.Generator().manual_seed(1000 + step)
    items = []
    for (h, w), boxes, classes in (((64, 96), [[4.0, 6.0, 60.0, 50.0], [70.0, 10.0, 94.0, 40.0]], [1, 2]),
                                   ((80, 64), [[10.0, 20.0, 60.0, 78.0]], [0])):
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inst = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))
        items.append({"image": img, "instances": inst, "height": h, "width": w, "image_id": step})
    return items


class _StepLoader:
    def __iter__(self):
        step = 0
        while True:
            yield _shapes_like_batches(step)
            step += 1


def _losses(cfg_path, iters):
    from detrex.config import instantiate
    from detrex.config import LazyConfig as LC
    from detrex.engine import Trainer
    from detrex.engine.defaults import enable_deterministic
    from detrex.utils.env import seed_all_rng

    cfg = LC.load(str(cfg_path))
    seed_all_rng(5)
    enable_deterministic()
    model = instantiate(cfg.model)
    model.train()
    trainer = Trainer(model, _StepLoader(), torch.optim.AdamW(model.parameters(), lr=1e-4),
                      clip_grad_params={"max_norm": 0.1, "norm_type": 2})
    trainer.train(0, iters)
    return {k: [v for v, _ in h.values()] for k, h in trainer.storage.histories().items()
            if k.startswith("loss") or k == "total_loss"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_dab_detr_shapes.py", "tiny_ks_dab_detr_shapes.py"])
def test_tiny_dab_detr_models_are_deterministic(name):
    from reliability_utils import CONFIGS

    old, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = _losses(CONFIGS / name, 3)
        torch.manual_seed(999)
        second = _losses(CONFIGS / name, 3)
    finally:
        torch.use_deterministic_algorithms(old)
        torch.set_num_threads(threads)
    assert "total_loss" in first and len(first["total_loss"]) == 3
    assert first == second

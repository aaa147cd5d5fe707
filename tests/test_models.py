"""Model modules: shapes, layers, masking, fusion sharing, position embeddings, encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stpredict.models import (
    BLEEP,
    METHODS,
    CMRCNet,
    MclSTExp,
    RetrievalModule,
    STPredictModel,
    build_image_encoder,
)
from stpredict.models._layers import (
    FusionBlock,
    ProjectionHead,
    ResidualCrossAttention,
    SNNGeneTokens,
    feature_mask,
)

N_GENES = 12


def _batch(size: int, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 3, size, size, generator=g),
        "expression": torch.rand(b, N_GENES, generator=g) * 3,
        "coords": torch.randint(0, 8, (b, 2), generator=g),
        "index": torch.arange(b),
    }


@pytest.mark.parametrize("method", sorted(METHODS))
def test_tiny_preset_shapes_and_losses(method):
    cls = METHODS[method]
    assert issubclass(cls, RetrievalModule)
    cfg = cls.default_config("tiny")
    module = cls(N_GENES, **cfg)
    batch = _batch(cfg["image_size"])
    img = module.encode_image(batch["image"])
    expr = module.encode_expression(batch["expression"], batch["coords"])
    assert img.shape == expr.shape == (4, cfg["dim"])
    out = module(batch)
    assert out["loss"].ndim == 0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.image_encoder.parameters())
    defaults = module.training_defaults
    assert defaults["image_size"] == cfg["image_size"]
    assert {"optimizer", "lr", "weight_decay", "epochs", "batch_size", "retrieval"} <= set(defaults)
    assert cfg["preset"] == "tiny"


def test_default_configs_are_complete_and_distinct():
    paper = CMRCNet.default_config("paper")
    assert paper["backbone"] == "vit_base_patch32_224"
    assert paper["backbone_kwargs"] == {"depth": 8, "num_heads": 8}
    assert paper["mask_ratio"] == 0.5
    assert paper["share_fusion"] is True
    assert paper["reconstruction"] == "mse"
    assert CMRCNet.default_config("paper-vitb")["backbone_kwargs"] == {}
    assert MclSTExp.default_config("paper")["max_coord"] == 128
    with pytest.raises(ValueError, match="preset"):
        CMRCNet.default_config("huge")
    cm = CMRCNet(N_GENES, **CMRCNet.default_config("tiny")).training_defaults
    assert (cm["optimizer"], cm["lr"], cm["weight_decay"], cm["lr_min"]) == ("adamw", 1e-4, 1e-3, 1e-5)
    assert cm["retrieval"] == {"k": 50, "weighting": "mean"}
    mcl = MclSTExp(N_GENES, **MclSTExp.default_config("tiny"))
    assert mcl.training_defaults["retrieval"] == {"k": 200, "weighting": "inverse_distance2"}
    assert mcl.training_defaults["optimizer"] == "adam"
    assert mcl.spot_context == "batch"
    assert mcl.eval_set_size == 32
    assert CMRCNet.spot_context == "none"
    assert CMRCNet.eval_set_size is None


def test_cpu_presets_share_the_cpu_recipe_with_each_methods_changes():
    from stpredict.models._presets import CPU_TRAINING, method_presets
    from stpredict.models._specs import RetrievalSpec, TrainingSpec

    for cls in (CMRCNet, BLEEP, MclSTExp):
        training = cls.presets["cpu"].training
        # mclSTExp keeps its authors' learning rate and trains 30 epochs instead of 100
        change = {"lr": 1e-4, "epochs": 30} if cls is MclSTExp else {}
        assert {key: training[key] for key in CPU_TRAINING} == {**CPU_TRAINING, **change}
    # the method's own optimiser and batch stay (mclSTExp: Adam, sets of 128)
    mcl = MclSTExp.presets["cpu"].training
    assert (mcl.optimizer, mcl.batch_size) == ("adam", 128)
    assert CMRCNet.presets["cpu"].training.epochs == BLEEP.presets["cpu"].training.epochs == 100
    networks = {"cpu": {}, "paper": {}}
    presets = method_presets(networks, TrainingSpec(epochs=7), RetrievalSpec(), cpu_training={"epochs": 3})
    assert (presets["cpu"].training.epochs, presets["paper"].training.epochs) == (3, 7)
    assert presets["cpu"].training.lr == CPU_TRAINING["lr"]


def test_cmrcnet_tiny_has_17_tokens_and_mean_pools_all_of_them():
    module = CMRCNet(N_GENES, **CMRCNet.default_config("tiny")).eval()
    image = _batch(32)["image"]
    tokens = module.image_encoder(image)
    assert tokens.shape == (4, 17, 32)
    expected = module.image_projection(tokens.mean(dim=1))
    torch.testing.assert_close(module.encode_image(image), expected)


def test_cmrcnet_reconstruction_options():
    cfg = CMRCNet.default_config("tiny")
    batch = _batch(32)
    plain = CMRCNet(N_GENES, **{**cfg, "reconstruction": None})
    out = plain(batch)
    assert set(out) == {"loss", "contrastive"}
    assert not hasattr(plain, "fusion")
    cosine = CMRCNet(N_GENES, **{**cfg, "reconstruction": "cosine"})
    assert 0 <= cosine(batch)["reconstruction"].item() <= 2
    with pytest.raises(ValueError, match="reconstruction"):
        CMRCNet(N_GENES, **{**cfg, "reconstruction": "l1"})


def test_cmrcnet_total_loss_combines_parts():
    torch.manual_seed(0)
    module = CMRCNet(N_GENES, **CMRCNet.default_config("tiny"))
    out = module(_batch(32))
    # loss >= log(1 + mean Lc) is not guaranteed (Jensen goes the other way); check the bound
    # mean(log(1+Lc)) <= log(1+mean(Lc))
    upper = math.log1p(out["contrastive"].item()) + math.log1p(out["reconstruction"].item())
    assert out["loss"].item() <= upper + 1e-5
    assert out["loss"].item() > math.log1p(out["reconstruction"].item())


def test_fusion_weight_sharing_changes_parameter_count():
    cfg = CMRCNet.default_config("tiny")
    shared = CMRCNet(N_GENES, **cfg)
    separate = CMRCNet(N_GENES, **{**cfg, "share_fusion": False})
    block = FusionBlock(cfg["dim"], cfg["fusion_heads"], 4.0, 0.1, 0.25)  # (dim, heads, mlp, dropouts)
    n_block = sum(p.numel() for p in block.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate - n_shared == n_block * (cfg["fusion_depth"] - 1)
    blocks = shared._fusion_blocks()
    assert len(blocks) == 2
    assert blocks[0] is blocks[1]


def test_feature_mask_statistics_and_determinism():
    x = torch.ones(200, 50)
    g = torch.Generator().manual_seed(1)
    for ratio in (0.1, 0.5, 0.9):
        masked = feature_mask(x, ratio, generator=g)
        frac = (masked == 0).float().mean().item()
        assert abs(frac - ratio) < 0.02  # 10,000 draws: sd ≈ 0.005
        assert set(masked.unique().tolist()) <= {0.0, 1.0}  # no rescaling of kept values
    a = feature_mask(x, 0.5, generator=torch.Generator().manual_seed(3))
    b = feature_mask(x, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(feature_mask(x, 0.0), x)
    assert feature_mask(x, 1.0).abs().sum() == 0
    with pytest.raises(ValueError, match="ratio"):
        feature_mask(x, 1.5)


def test_mask_in_eval_option():
    cfg = CMRCNet.default_config("tiny")
    batch = _batch(32)
    on = CMRCNet(N_GENES, **cfg).eval()
    tokens = on.image_encoder(batch["image"])
    r1 = on.reconstruct(tokens, batch["expression"], generator=torch.Generator().manual_seed(0))
    r2 = on.reconstruct(tokens, batch["expression"], generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(r1, r2)  # masking still random in eval mode (authors' code)
    off = CMRCNet(N_GENES, **{**cfg, "mask_in_eval": False})
    off.load_state_dict(on.state_dict())
    off.eval()
    r3 = off.reconstruct(tokens, batch["expression"], generator=torch.Generator().manual_seed(0))
    r4 = off.reconstruct(tokens, batch["expression"], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(r3, r4)


def test_projection_head_structure():
    torch.manual_seed(0)
    head = ProjectionHead(5, dim=4, dropout=0.1).eval()
    x = torch.randn(3, 5)
    p = head.projection(x)
    expected = torch.nn.functional.layer_norm(
        head.fc(torch.nn.functional.gelu(p)) + p, (4,), head.norm.weight, head.norm.bias
    )
    torch.testing.assert_close(head(x), expected)


def test_snn_gene_tokens_shape_and_activation():
    tokens = SNNGeneTokens(N_GENES, n_tokens=8, dim=16).eval()
    assert tokens(torch.rand(3, N_GENES)).shape == (3, 8, 16)
    assert isinstance(SNNGeneTokens(N_GENES, activation="selu").act, torch.nn.SELU)
    with pytest.raises(ValueError, match="activation"):
        SNNGeneTokens(N_GENES, activation="relu")


def test_residual_cross_attention_matches_formula():
    torch.manual_seed(0)
    layer = ResidualCrossAttention(dim=8, heads=2, dropout=0.0).eval()
    img, genes = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    q, k = layer.query(img)[0], layer.key(genes)[0]
    v1, v2 = layer.value_image(q), layer.value_gene(k)
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[:, s] @ k[:, s].T / 2.0, dim=-1)  # sqrt(head_dim=4) = 2
        heads.append(v1[:, s] + a @ v2[:, s])
    expected = img[0] + torch.cat(heads, dim=-1)
    torch.testing.assert_close(layer(img, genes)[0], expected)


def test_mclstexp_position_embedding_changes_embedding():
    module = MclSTExp(N_GENES, **MclSTExp.default_config("tiny")).eval()
    expr = torch.rand(1, N_GENES).repeat(2, 1)
    out = module.encode_expression(expr, torch.tensor([[0, 0], [5, 3]]))
    assert not torch.allclose(out[0], out[1])
    same = module.encode_expression(expr, torch.tensor([[2, 2], [2, 2]]))
    torch.testing.assert_close(same[0], same[1])


def test_mclstexp_attends_over_the_set_and_checks_coords():
    module = MclSTExp(N_GENES, **MclSTExp.default_config("tiny")).eval()
    expr, coords = torch.rand(3, N_GENES), torch.tensor([[0, 0], [1, 0], [2, 0]])
    full = module.encode_expression(expr, coords)
    alone = module.encode_expression(expr[:1], coords[:1])
    assert not torch.allclose(full[0], alone[0])  # context matters
    with pytest.raises(ValueError, match="max_coord"):
        module.encode_expression(expr, torch.tensor([[0, 0], [1, 0], [64, 0]]))
    with pytest.raises(ValueError, match="coords"):
        module.encode_expression(expr, None)
    with pytest.raises(ValueError, match="spot_context"):
        MclSTExp(N_GENES, **{**MclSTExp.default_config("tiny"), "spot_context": "tissue"})
    slide = MclSTExp(N_GENES, **{**MclSTExp.default_config("tiny"), "spot_context": "slide"})
    assert slide.spot_context == "slide"


def test_module_input_validation():
    module = BLEEP(N_GENES, **BLEEP.default_config("tiny"))
    with pytest.raises(ValueError, match="expected \\[B, 3, 32, 32\\]"):
        module.encode_image(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=f"expected \\[B, {N_GENES}\\]"):
        module.encode_expression(torch.zeros(2, N_GENES + 1))
    with pytest.raises(ValueError, match="n_genes"):
        BLEEP(0, **BLEEP.default_config("tiny"))


def test_encoder_outputs_tokens_for_vit_and_cnn():
    vit = build_image_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2
    )
    assert vit.is_vit
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 17, 16)
    cnn = build_image_encoder("resnet18", image_size=32, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
    x = torch.randn(2, 3, 32, 32)
    out = cnn(x)
    assert not cnn.is_vit
    assert out.shape == (2, 1 + 1 * 1, cnn.out_dim)  # pooled token + the 1 × 1 map at 32 px
    cnn.eval()
    # the mean over the tokens is timm's own global average pool
    torch.testing.assert_close(cnn(x).mean(dim=1), cnn.model(x), rtol=1e-5, atol=1e-6)
    big = cnn(torch.zeros(1, 3, 224, 224))
    assert big.shape[1] == 50  # 7 × 7 + pooled: the token count of CMRCNet's ViT-B/32
    with pytest.raises(ValueError, match="not a timm model"):
        build_image_encoder("no_such_net")


def test_encoder_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    kwargs = {"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    src = build_image_encoder("vit_tiny_patch16_224", **kwargs).eval()
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(1)
        dst = build_image_encoder("vit_tiny_patch16_224", weights_path=tmp_path / name, **kwargs).eval()
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing keys"):
        build_image_encoder(
            "vit_tiny_patch16_224", weights_path=tmp_path / "w.safetensors", **{**kwargs, "depth": 2}
        )
    with pytest.raises(FileNotFoundError):
        build_image_encoder("vit_tiny_patch16_224", weights_path=tmp_path / "nope.safetensors", **kwargs)
    # the module config path: weights_path through the preset config
    cfg = {
        **CMRCNet.default_config("tiny"),
        "backbone_kwargs": {k: v for k, v in kwargs.items() if k != "image_size"},
    }
    module = CMRCNet(N_GENES, **{**cfg, "weights_path": str(tmp_path / "w.safetensors")}).eval()
    torch.testing.assert_close(module.image_encoder(x), src(x), rtol=0, atol=0)


def test_stpredict_model_embeddings_and_bank():
    module = MclSTExp(N_GENES, **MclSTExp.default_config("tiny"))
    genes = [f"g{i}" for i in range(N_GENES)]
    model = STPredictModel("mclstexp", module, genes=genes)
    assert model.retrieval == {"k": 200, "weighting": "inverse_distance2"}
    assert model.patch["size"] == 32
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    emb = model.embed_images(patches, batch_size=2, progress=False)
    assert emb.shape == (5, 32)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(
        emb, model.embed_images(patches, batch_size=5, progress=False), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="uint8"):
        model.embed_images(patches.astype(np.float32), progress=False)

    expr = rng.random((70, N_GENES)).astype(np.float32)
    coords = rng.integers(0, 10, (70, 2))
    emb = model.embed_expression(expr, coords)
    # consecutive sets of eval_set_size=32: the first 32 are embedded together
    first = module.eval().encode_expression(torch.from_numpy(expr[:32]), torch.from_numpy(coords[:32]))
    np.testing.assert_allclose(emb[:32], first.detach().numpy(), rtol=1e-5, atol=1e-6)
    model.set_bank(expr, library_id=["a"] * 70, obs_names=[f"s{i}" for i in range(70)], coords=coords)
    np.testing.assert_array_equal(model.bank["embeddings"], emb)
    assert "70 spots from 1 slide" in repr(model)
    with pytest.raises(ValueError, match="library_id"):
        model.set_bank(expr, emb, library_id=["a"], obs_names=[f"s{i}" for i in range(70)])
    with pytest.raises(ValueError, match="genes"):
        STPredictModel("mclstexp", module, genes=genes[:-1])
    with pytest.raises(TypeError, match="expected CMRCNet"):
        STPredictModel("cmrcnet", module, genes=genes)


@pytest.mark.slow
def test_paper_configs_build_offline():
    cfg = CMRCNet.default_config("paper")
    module = CMRCNet(8, **cfg)
    tokens = module.image_encoder(torch.zeros(1, 3, 224, 224))
    assert tokens.shape == (1, 50, 768)
    assert len(module.image_encoder.model.blocks) == 8
    assert module.image_encoder.model.blocks[0].attn.num_heads == 8


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_tiny_models_learn_to_match_pairs(method):
    """A few optimiser steps on 16 pairs: the loss drops and retrieval finds the right pair."""
    cls = METHODS[method]
    torch.manual_seed(0)
    module = cls(N_GENES, **cls.default_config("tiny"))
    batch = _batch(32, b=16, seed=1)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = module(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    module.eval()
    with torch.no_grad():
        img = torch.nn.functional.normalize(module.encode_image(batch["image"]), dim=1)
        expr = torch.nn.functional.normalize(
            module.encode_expression(batch["expression"], batch["coords"]), dim=1
        )
    top1 = ((img @ expr.T).argmax(dim=1) == torch.arange(16)).float().mean().item()
    assert top1 >= 0.75


def test_methods_are_siblings_not_subclasses_of_each_other():
    from stpredict.models import BLEEP, METHODS, CMRCNet, MclSTExp

    module = CMRCNet(10, **CMRCNet.default_config("tiny"))
    assert not isinstance(module, BLEEP)
    for a in METHODS.values():
        for b in METHODS.values():
            assert a is b or not issubclass(a, b), (a, b)
    assert not issubclass(MclSTExp, CMRCNet)


def test_dihedral_views_are_the_eight_symmetries_made_lazily():
    import types

    import torch

    from stpredict.models._base import dihedral_views

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = dihedral_views(images)
    assert isinstance(views, types.GeneratorType)  # one rotated copy of the batch at a time
    views = list(views)
    assert len(views) == 8
    assert torch.equal(views[0], images)
    assert len({tuple(v[0, 0].flatten().tolist()) for v in views}) == 8  # all distinct
    assert torch.equal(views[5], torch.rot90(images.flip(3), 1, dims=(2, 3)))


def test_default_embedding_batch_bounds_cpu_memory_for_large_patches():
    import torch

    from stpredict.models._fitted import image_batch_size

    cpu = torch.device("cpu")
    assert image_batch_size(64, cpu) == 256
    assert image_batch_size(112, cpu) == 256
    assert image_batch_size(224, cpu) == 64
    assert image_batch_size(2048, cpu) == 16  # never below 16
    assert image_batch_size(224, torch.device("cuda")) == 256  # activations live on the device

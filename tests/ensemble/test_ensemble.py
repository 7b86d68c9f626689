"""dt.Ensemble: exact one-member equivalence, combination rules, mask semantics, seeding, LoRA, costs, bad input."""

import hashlib
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import datatrace as dt
from datatrace._utils import derive_seed
from datatrace.benchmarks.recipes import fit_adam_full_batch
from datatrace.ensemble import MaskedModel
from testable_tasks import blobs, fit, mlp

TASK = dt.ClassificationTask()
FACTORIES = {
    "trak": lambda ms: dt.TRAK(ms, TASK, proj_dim=32, verbose=False),
    "graddot": lambda ms: dt.GradDot(ms, TASK, verbose=False),
    "gradcos": lambda ms: dt.GradCos(ms, TASK, verbose=False),
    "if-explicit": lambda ms: dt.InfluenceFunction(ms, TASK, solver="explicit", verbose=False),
    "if-ekfac": lambda ms: dt.InfluenceFunction(ms, TASK, solver="ekfac", verbose=False),
    "tracin": lambda ms: dt.TracIn(ms, TASK, verbose=False),
    "logra": lambda ms: dt.LoGra(ms, TASK, verbose=False),
}
Setup = namedtuple("Setup", "train query models")


def train_mlp(data, seed):
    x, y = data.tensors()
    return fit(mlp(seed=seed), x, y, steps=60)


def train_checkpoints(data, seed):
    x, y = data.tensors()
    return fit_adam_full_batch(mlp(seed=seed), x, y, steps=60, lr=0.05, l2=0.0, n_checkpoints=3)


@pytest.fixture(scope="module")
def setup():
    train, query = blobs(40), blobs(6, seed=1)
    return Setup(train, query, [train_mlp(dt.Data(train), s) for s in (0, 1)])


def values(ens_or_attr, setup):
    return ens_or_attr.fit(setup.train).score(setup.query).values


# -- one member reproduces the plain attributor ------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_one_independent_member_is_the_plain_attributor(setup, method):
    factory = FACTORIES[method]
    ens = dt.Ensemble(factory, "independent", models=setup.models[:1], verbose=False)
    np.testing.assert_array_equal(values(ens, setup), values(factory(setup.models[:1]), setup))


def test_trained_members_use_derived_seeds_and_subsets(setup):
    ens = dt.Ensemble(FACTORIES["trak"], train_fn=train_mlp, subset_fraction=0.5, seed=3, verbose=False)
    got = values(ens, setup)
    rng = np.random.default_rng(derive_seed(3, "half-model", 0))
    half = dt.Data(setup.train).subset(np.sort(rng.choice(40, 20, replace=False)))
    plain = FACTORIES["trak"]([train_mlp(half, derive_seed(3, 0) % 2**31)])
    np.testing.assert_array_equal(got, values(plain, setup))
    assert ens.costs_.train_s > 0 and not ens.costs_.models_given


def test_checkpoint_members_are_the_last_checkpoints(setup):
    ens = dt.Ensemble(FACTORIES["graddot"], "checkpoints", train_fn=train_checkpoints, n_members=2, verbose=False)
    got = values(ens, setup)
    ckpts = train_checkpoints(dt.Data(setup.train), derive_seed(0, 0) % 2**31)
    np.testing.assert_allclose(got, values(FACTORIES["graddot"](ckpts[-2:]), setup), rtol=1e-6, atol=1e-9)
    one = dt.Ensemble(FACTORIES["graddot"], "checkpoints", train_fn=train_checkpoints, verbose=False)
    np.testing.assert_allclose(values(one, setup), values(FACTORIES["graddot"](ckpts[-1:]), setup), rtol=1e-6)


@pytest.mark.parametrize("mask", ["member", "sample"])
def test_one_dropout_member_is_the_attributor_on_its_masked_model(setup, mask):
    ens = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], mask=mask, verbose=False)
    got = values(ens, setup)
    assert isinstance(ens.members_[0], MaskedModel)
    np.testing.assert_array_equal(got, values(FACTORIES["trak"](ens.members_), setup))


@pytest.mark.parametrize("options", [{"mask": "member"}, {"mask": "sample"}, {"q_only": True, "n_members": 3}])
def test_rate_zero_dropout_is_the_plain_attributor(setup, options):
    ens = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], rate=0.0, verbose=False, **options)
    np.testing.assert_allclose(values(ens, setup), values(FACTORIES["trak"](setup.models[:1]), setup), rtol=1e-6)


def test_one_lora_member_is_the_attributor_on_its_adapters(setup):
    ens = dt.Ensemble(FACTORIES["trak"], "lora", models=setup.models[:1], lora_rank=2, lora_steps=5, verbose=False)
    got = values(ens, setup)
    plain = FACTORIES["trak"](ens.members_)
    plain.params = [n for n, p in ens.members_[0].named_parameters() if p.requires_grad]
    np.testing.assert_array_equal(got, values(plain, setup))


# -- combination rules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["graddot", "gradcos", "if-explicit", "logra"])
def test_dropout_ensemble_is_the_mean_of_member_scores(setup, method):
    ens = dt.Ensemble(FACTORIES[method], "dropout", models=setup.models, n_members=2, verbose=False)
    got = values(ens, setup)
    singles = [values(FACTORIES[method]([m]), setup) for m in ens.members_]
    np.testing.assert_allclose(got, np.mean(singles, axis=0), rtol=1e-4, atol=1e-7)


def test_trak_ensemble_averages_kernel_products_then_multiplies_by_mean_q(setup):
    ens = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], n_members=3, verbose=False)
    got = values(ens, setup)
    x, y = setup.train
    qs = [TASK.output_to_loss(m, (x, y)).detach().numpy() for m in ens.members_]
    kernel_products = [values(FACTORIES["trak"]([m]), setup) / q for m, q in zip(ens.members_, qs)]
    np.testing.assert_allclose(got, np.mean(kernel_products, axis=0) * np.mean(qs, axis=0), rtol=1e-4, atol=1e-7)


def test_q_only_uses_clean_features_and_masked_q(setup):
    ens = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], n_members=4, q_only=True, verbose=False)
    got = values(ens, setup)
    x, y = setup.train
    q_clean = TASK.output_to_loss(setup.models[0], (x, y)).detach().numpy()
    q_masked = np.mean([TASK.output_to_loss(m, (x, y)).detach().numpy() for m in ens.members_], axis=0)
    clean = values(FACTORIES["trak"](setup.models[:1]), setup)
    np.testing.assert_allclose(got, clean / q_clean * q_masked, rtol=1e-4, atol=1e-7)
    assert len(ens.attributor_.stores_) == 1 and ens.costs_.n_members == 4


# -- masks -------------------------------------------------------------------------------------------------------
def test_member_masks_are_shared_by_training_and_query_gradients(setup, monkeypatch):
    seen = {}
    original = MaskedModel.keep_mask

    def spy(self, i, x):
        mask = original(self, i, x)
        seen.setdefault(id(self), set()).add(tuple(mask.tolist()))
        return mask

    monkeypatch.setattr(MaskedModel, "keep_mask", spy)
    ens = dt.Ensemble(FACTORIES["graddot"], "dropout", models=setup.models[:1], n_members=3, rate=0.5, verbose=False)
    ens.fit(setup.train)
    after_fit = {k: set(v) for k, v in seen.items()}
    assert ens.score(setup.query).values.shape == (6, 40)
    assert seen == after_fit and len(seen) == 3  # scoring used exactly the masks of the training gradients
    masks = [next(iter(v)) for v in seen.values()]
    assert all(len(v) == 1 for v in seen.values()) and len(set(masks)) == 3  # one mask per member, all different


def test_sample_masks_differ_per_example_and_keep_the_rate(setup):
    member = MaskedModel(setup.models[0], ["2"], [8], 0.5, "sample", seed=0)
    x = torch.randn(400, 8)
    keep = member.keep_mask(0, x)
    assert keep.shape == (400, 8) and len({tuple(r) for r in keep.tolist()}) > 100
    assert abs(float(keep.mean()) - 0.5) < 0.05
    torch.testing.assert_close(keep, member.keep_mask(0, x))


@pytest.mark.parametrize("options", [{"mask": "member"}, {"mask": "sample"}, {"q_only": True}])
def test_masks_are_seeded(setup, options):
    def run(seed):
        ens = dt.Ensemble(
            FACTORIES["trak"], "dropout", models=setup.models[:1], n_members=2, rate=0.5, seed=seed, **options
        )
        return values(ens, setup)

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


def test_default_layers_prefer_dropout_modules():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3)).eval()
    ens = dt.Ensemble(FACTORIES["graddot"], "dropout", models=[model], verbose=False).fit(blobs(20))
    assert ens.layers_ == ["2"]
    plain = dt.Ensemble(FACTORIES["graddot"], "dropout", models=[mlp()], verbose=False).fit(blobs(20))
    assert plain.layers_ == ["2"]  # inputs of every nn.Linear but the first


# -- LoRA ----------------------------------------------------------------------------------------------------------
def test_lora_gradients_are_wrt_adapters_only_and_base_is_untouched(setup, tmp_path):
    base = setup.models[0]
    path = tmp_path / "base.pt"
    torch.save(base.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    factory = lambda ms: dt.TRAK(ms, TASK, proj_dim=None, verbose=False)  # noqa: E731
    ens = dt.Ensemble(factory, "lora", models=[base], n_members=2, lora_rank=2, lora_targets=["2"], lora_steps=10)
    values(ens, setup)
    assert ens.attributor_.feature_dim_ == 2 * 8 + 3 * 2  # A (2×8) + B (3×2) of the last layer only
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not torch.equal(*[m.get_submodule("2").lora_B["default"].weight for m in ens.members_])


# -- costs -----------------------------------------------------------------------------------------------------------
def test_costs_split_weights_and_features(setup):
    dropout = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], n_members=2, verbose=False)
    independent = dt.Ensemble(FACTORIES["trak"], train_fn=train_mlp, n_models=2, verbose=False)
    q_only = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models[:1], n_members=2, q_only=True)
    for ens in (dropout, independent, q_only):
        values(ens, setup)
        c = ens.costs_
        assert c.fit_s > 0 and c.score_s > 0 and c.serve_s == c.fit_s + c.score_s
        assert c.storage_bytes == c.weight_bytes + c.feature_bytes and c.n_members == 2
    weights = sum(p.numel() * 4 for p in setup.models[0].parameters())
    assert independent.costs_.weight_bytes == 2 * weights
    assert dropout.costs_.weight_bytes == weights + 2 * 8  # one base + one bool mask of 8 units per member
    assert dropout.costs_.feature_bytes == independent.costs_.feature_bytes == 2 * 40 * (32 + 1) * 4
    assert q_only.costs_.feature_bytes == 40 * (32 + 1) * 4 + 40 * 4
    ratios = dropout.costs_.ratios(independent.costs_)
    assert ratios["weight_bytes"] < 1 and ratios["feature_bytes"] == 1 and set(ratios) >= {"train_s", "serve_s"}
    assert dropout.score(setup.query).metadata["ensemble"]["mask"] == "member"


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_outside_unit_interval(setup, rate):
    with pytest.raises(dt.InputError, match=r"\[0, 1\)"):
        dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models, rate=rate)


def test_dropout_on_a_model_without_maskable_layers_names_its_layers():
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    ens = dt.Ensemble(FACTORIES["graddot"], "dropout", models=[model], verbose=False)
    with pytest.raises(dt.InputError, match=r"Its layers: 0 \(Linear\)"):
        ens.fit(blobs(20))
    bad = dt.Ensemble(FACTORIES["graddot"], "dropout", models=[mlp()], layers=["1"], verbose=False)
    with pytest.raises(dt.InputError, match=r"Candidates in Sequential: \['0', '2'\]"):
        bad.fit(blobs(20))


def test_lora_targets_that_match_nothing_list_candidates(setup):
    ens = dt.Ensemble(FACTORIES["trak"], "lora", models=setup.models[:1], lora_targets=["fc9"], verbose=False)
    with pytest.raises(dt.InputError, match=r"candidates: \['0', '2'\]"):
        ens.fit(setup.train)


def test_features_beyond_free_disk_are_refused_with_the_number(setup, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: namedtuple("U", "total used free")(10, 10, 1000))
    ens = dt.Ensemble(FACTORIES["trak"], "dropout", models=setup.models, n_members=8, verbose=False)
    with pytest.raises(
        dt.InputError, match=r"16 members need ≈ 84,480 bytes .*\(40 examples × 32 dimensions.* 1,000 bytes are free"
    ):
        ens.fit(setup.train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "bagging"}, "kind"),
        ({"kind": "independent", "n_members": 2}, "raise n_models"),
        ({"kind": "dropout", "n_members": 0}, "n_members"),
        ({"kind": "dropout", "mask": "token"}, "mask"),
        ({"kind": "lora", "q_only": True}, "q_only"),
        ({"kind": "independent", "subset_fraction": 0.5}, "subset_fraction"),
        ({"kind": "checkpoints"}, "checkpoints"),
    ],
)
def test_bad_options_are_refused(setup, kwargs, match):
    with pytest.raises(dt.DatatraceError, match=match):
        dt.Ensemble(FACTORIES["trak"], models=setup.models, **kwargs)


def test_models_and_train_fn_are_exclusive_and_q_only_needs_trak(setup):
    with pytest.raises(dt.InputError, match="exactly one"):
        dt.Ensemble(FACTORIES["trak"], models=setup.models, train_fn=train_mlp)
    ens = dt.Ensemble(FACTORIES["graddot"], "dropout", models=setup.models, q_only=True, verbose=False)
    with pytest.raises(dt.InputError, match="needs a TRAK"):
        ens.fit(setup.train)
    with pytest.raises(dt.NotFittedError):
        ens.score(setup.query)
    short = dt.Ensemble(FACTORIES["trak"], "checkpoints", train_fn=train_checkpoints, n_members=5, verbose=False)
    with pytest.raises(dt.InputError, match="returned 3"):
        short.fit(setup.train)

"""CTC models: shapes, declared lengths and receptive fields, configs, ExplicitGRU, sizes, and that they learn."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="models need the training extras (torch)")
from torch import Tensor  # noqa: E402

from emgkey.charset import BLANK, NUM_CLASSES  # noqa: E402
from emgkey.train.models import (  # noqa: E402
    MODEL_NAMES,
    CTCModel,
    ExplicitGRU,
    GRUConfig,
    build_model,
    config_from_dict,
    default_config,
)
from emgkey.train.models.complexity import count_macs, count_params, macs_per_second  # noqa: E402
from emgkey.train.models.registry import replace_config  # noqa: E402

PROFILES = ("emg2qwerty", "armband8")

torch.set_num_threads(1)


def _features(model: CTCModel, T: int, N: int = 2, seed: int = 0) -> Tensor:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, c.n_bands, c.channels, c.n_freq, generator=g)


def _tiny(name: str, profile: str = "emg2qwerty", **changes) -> CTCModel:
    torch.manual_seed(0)
    cfg = default_config(name, profile, size="tiny")
    return build_model(replace_config(cfg, **changes) if changes else cfg)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_output_lengths(name, profile):
    model = _tiny(name, profile).eval()
    c = model.config
    assert (c.n_bands, c.channels) == ((2, 16) if profile == "emg2qwerty" else (2, 8))
    T = 40
    with torch.no_grad():
        out = model(_features(model, T, N=3))
    assert out.shape == (model.output_lengths(T), 3, NUM_CLASSES)
    # log-probabilities: each frame's distribution sums to one
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[:2]))
    # tensor lengths follow the same arithmetic as ints
    lengths = torch.tensor([T, 33, 30])
    assert model.output_lengths(lengths).tolist() == [model.output_lengths(int(t)) for t in lengths]


def test_output_lengths_come_from_the_layers():
    tds = _tiny("tds_conv")  # 2 blocks, kernel 4: each valid conv drops 3 frames
    assert tds.receptive_field == 7 and tds.output_lengths(40) == 34 and tds.output_lengths(6) == 0
    tr = _tiny("transformer", conv_kernels=(3, 3), conv_strides=(1, 2))
    assert tr.stride == 2 and tr.output_lengths(40) == (40 - 2 - 3) // 2 + 1
    for name in ("gru", "bilstm", "tcn"):
        assert _tiny(name).output_lengths(40) == 40


def _dependence(model: CTCModel, T: int, j: int) -> Tensor:
    """Which output frames change when input frame j changes: (T_out,) bool."""
    model.eval()
    x = _features(model, T, N=1)
    y = x.clone()
    y[j] += 3.0
    with torch.no_grad():
        return (model(x) - model(y)).abs().amax(dim=(1, 2)) > 1e-6


def test_declared_receptive_fields_hold():
    tcn = _tiny("tcn")  # dilations (1, 2, 4), kernel 3
    rf = tcn.receptive_field
    assert rf == 1 + 2 * (1 + 2 + 4)
    changed = _dependence(tcn, T=40, j=10)
    assert not changed[:10].any(), "causal: no output before the changed frame moves"
    assert changed[10] and not changed[10 + rf :].any(), "nothing past the receptive field moves"

    tds = _tiny("tds_conv")  # output t sees inputs t .. t + rf - 1
    changed = _dependence(tds, T=40, j=20)
    idx = changed.nonzero().flatten()
    assert idx.min() == 20 - tds.receptive_field + 1 and idx.max() == 20


def test_bilstm_lookahead_is_bounded():
    model = _tiny("bilstm")  # chunk 5, look-ahead 3
    C, L = model.chunk_frames, model.lookahead_frames
    j = 17  # output t describes input t - L and sees inputs up to the end of its block (padded coordinates)
    changed = _dependence(model, T=40, j=j)
    first_block = j // C  # the block whose window first contains input j at padded index j + L
    assert not changed[: first_block * C].any(), "blocks whose window ends before input j are untouched"
    assert changed[first_block * C : j + L].any(), "the look-ahead does reach back into the current block"
    assert changed[j + L :].all(), "the forward direction carries it onward"


def test_transformer_ignores_right_padding_with_lengths():
    model = _tiny("transformer").eval()
    x = _features(model, 30, N=1)
    padded = torch.cat([x, torch.randn(11, *x.shape[1:])], dim=0)
    with torch.no_grad():
        ref = model(x)
        out = model(padded, input_lengths=torch.tensor([30]))
    torch.testing.assert_close(out[: ref.shape[0]], ref, atol=1e-5, rtol=1e-5)


def test_learned_positions():
    model = _tiny("transformer", positions="learned", max_positions=32).eval()
    with torch.no_grad():
        assert model(_features(model, 40)).shape[0] == model.output_lengths(40)
    with pytest.raises(AssertionError, match="max_positions"):
        model(_features(model, 80))


# --- configs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_round_trip(name):
    cfg = default_config(name, "armband8")
    d = json.loads(json.dumps(cfg.to_dict()))  # what a checkpoint stores
    assert d["name"] == name
    assert config_from_dict(d) == cfg
    assert type(cfg).from_dict(d) == cfg
    model = build_model(d)
    assert model.config == cfg


def test_config_rejects_unknown_and_wrong_keys():
    d = default_config("gru", "emg2qwerty").to_dict()
    with pytest.raises(ValueError, match="hiden_size"):
        config_from_dict({**d, "hiden_size": 10})
    with pytest.raises(ValueError, match="unknown model"):
        build_model({**d, "name": "lstm"})
    with pytest.raises(ValueError, match="no 'name'"):
        config_from_dict({k: v for k, v in d.items() if k != "name"})
    with pytest.raises(AssertionError, match="expected 'gru'"):
        GRUConfig(name="tcn")
    with pytest.raises(ValueError, match="hidden"):
        replace_config(default_config("gru", "emg2qwerty"), hidden=3)
    with pytest.raises(AssertionError, match="divide"):
        config_from_dict({**default_config("tds_conv", "emg2qwerty").to_dict(), "block_channels": [25]})


def test_default_configs_follow_profile_and_features():
    from emgkey.features import FeatureConfig
    from emgkey.profiles import ARMBAND8

    cfg = default_config("gru", "armband8")
    assert (cfg.channels, cfg.n_freq) == (8, 9)
    mel = FeatureConfig.for_profile(ARMBAND8, kind="logmel")
    assert default_config("tcn", ARMBAND8, mel).n_freq == mel.n_freq == 8
    assert default_config("bilstm", "emg2qwerty").chunk_frames == 16  # 128 ms at 125 Hz
    assert default_config("tds_conv", "emg2qwerty").kernel_width == 32  # emg2qwerty's own


# --- ExplicitGRU -------------------------------------------------------------------------------------------------


def test_explicit_gru_equals_nn_gru():
    torch.manual_seed(1)
    gru = torch.nn.GRU(7, 5, num_layers=3)
    explicit = ExplicitGRU(7, 5, num_layers=3)
    explicit.load_state_dict(gru.state_dict())  # same parameter names and shapes
    assert ExplicitGRU.from_gru(gru).state_dict().keys() == gru.state_dict().keys()
    x, h0 = torch.randn(11, 4, 7), torch.randn(3, 4, 5)
    with torch.no_grad():
        for h in (None, h0):
            y_ref, h_ref = gru(x, h)
            y, h_n = explicit(x, h)
            torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(h_n, h_ref, atol=1e-6, rtol=1e-5)
    # and the other way: an nn.GRU loads an ExplicitGRU's weights
    torch.nn.GRU(7, 5, num_layers=3).load_state_dict(explicit.state_dict())


def test_gru_checkpoint_loads_into_explicit_model():
    model = _tiny("gru").eval()
    explicit = build_model({**model.config.to_dict(), "rnn_impl": "explicit"}).eval()
    explicit.load_state_dict(model.state_dict())
    assert isinstance(explicit.rnn, ExplicitGRU)
    assert isinstance(model.with_explicit_gru().rnn, ExplicitGRU)
    x = _features(model, 25)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.with_explicit_gru()(x), model(x), atol=1e-5, rtol=1e-5)


# --- sizes -------------------------------------------------------------------------------------------------------


def test_tds_conv_default_matches_emg2qwerty_size():
    model = build_model(default_config("tds_conv", "emg2qwerty"))
    assert abs(count_params(model) - 5.3e6) / 5.3e6 < 0.05
    assert model.receptive_field == 1 + 4 * 31


@pytest.mark.parametrize("profile", PROFILES)
def test_small_teachers_sit_between_students_and_defaults(profile):
    # "small" is the CPU-sized teacher: more parameters than the biggest student, a fraction of the default.
    biggest_student = max(count_params(build_model(default_config(n, profile))) for n in ("gru", "bilstm", "tcn"))
    for name in ("tds_conv", "transformer"):
        small = count_params(build_model(default_config(name, profile, size="small")))
        default = count_params(build_model(default_config(name, profile)))
        assert small < default / 4, f"{name} small has {small:,} params vs default {default:,}"
        assert small > biggest_student, f"{name} small {small:,} vs the biggest student {biggest_student:,}"
    # students have no small preset: it is their default
    assert default_config("gru", profile, size="small") == default_config("gru", profile)
    with pytest.raises(AssertionError, match="size must be one of"):
        default_config("gru", profile, size="huge")  # type: ignore[arg-type]


def test_macs_match_hand_count_for_gru():
    model = _tiny("gru")
    c = model.config
    H, D = c.hidden_size, c.n_bands * c.mlp_features[-1]
    per_frame = (
        len(c.offsets) * c.n_bands * c.channels * c.n_freq * c.mlp_features[-1]  # rotation-invariant MLP
        + 3 * H * (D + H)
        + 3 * H * (H + H)  # two GRU layers
        + H * c.num_classes  # classifier
    )
    assert count_macs(model, 10) == 10 * per_frame
    assert macs_per_second(model, 125.0) == 125 * per_frame
    # ExplicitGRU is counted like nn.GRU
    assert count_macs(model.with_explicit_gru(), 10) == 10 * per_frame


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_complexity_is_positive_for_tiny_models(name):
    model = _tiny(name, "armband8")
    assert count_params(model) > 0 and macs_per_second(model, 100.0) > 0


# --- learning ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "steps"), [("gru", 150), ("tcn", 100), ("bilstm", 60)])
def test_tiny_model_overfits_one_batch(name, steps):
    torch.manual_seed(0)
    model = _tiny(name, "armband8", dropout=0.0).train()
    x = _features(model, 30, N=2)
    targets = torch.tensor([[3, 17, 42, 5], [60, 8, 8, 90]])  # a repeated key needs a blank between
    assert (targets != BLANK).all()
    in_lengths = torch.tensor([30, 30])
    ctc = torch.nn.CTCLoss(blank=BLANK)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(steps):
        log_probs = model(x, in_lengths)
        loss = ctc(log_probs, targets, model.output_lengths(in_lengths), torch.tensor([4, 4]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # ~2.3 per label is the all-blank plateau; well under 1 means it has learned the keys themselves.
    assert losses[-1] < 1.0 < 0.1 * losses[0], f"CTC loss went {losses[0]:.2f} -> {losses[-1]:.2f}"

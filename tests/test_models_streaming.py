"""Streaming students: forward_chunk over any chunking equals the offline forward, with pure, explicit state."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch", reason="models need the training extras (torch)")
from torch import Tensor  # noqa: E402

from emgkey.train.models import STREAMING_MODELS, StreamingModel, build_model, default_config  # noqa: E402
from emgkey.train.models.gru import GRUConfig  # noqa: E402
from emgkey.train.models.registry import replace_config  # noqa: E402

torch.set_num_threads(1)
ATOL = 1e-5


def _model(name: str, profile: str = "emg2qwerty", **changes) -> StreamingModel:
    """A tiny model in eval mode with non-trivial normalisation statistics."""
    torch.manual_seed(0)
    cfg = default_config(name, profile, size="tiny")
    model = build_model(replace_config(cfg, **changes) if changes else cfg)
    assert isinstance(model, StreamingModel)
    bn = model.front.norm.batch_norm
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _features(model: StreamingModel, T: int, N: int = 2, seed: int = 0) -> Tensor:
    c = model.config
    return torch.randn(T, N, c.n_bands, c.channels, c.n_freq, generator=torch.Generator().manual_seed(seed))


def _stream(model: StreamingModel, x: Tensor, sizes: list[int]) -> Tensor:
    assert sum(sizes) == x.shape[0]
    state = model.init_state(x.shape[1])
    outs, t = [], 0
    with torch.no_grad():
        for n in sizes:
            out, state = model.forward_chunk(x[t : t + n], state)
            assert out.shape[0] == n, "a chunk of n frames emits n frames"
            outs.append(out)
            t += n
    return torch.cat(outs, dim=0)


def _random_sizes(T: int, rng: random.Random, max_size: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < T:
        sizes.append(min(rng.randint(1, max_size), T - sum(sizes)))
    return sizes


def _aligned_sizes(T: int, chunk: int) -> list[int]:
    return [chunk] * (T // chunk) + ([T % chunk] if T % chunk else [])


@pytest.mark.parametrize("profile", ["emg2qwerty", "armband8"])
@pytest.mark.parametrize("name", ["gru", "tcn"])
def test_causal_models_stream_any_chunking(name, profile):
    model = _model(name, profile)
    x = _features(model, 53)
    with torch.no_grad():
        offline = model(x)
    rng = random.Random(f"{name}-{profile}")
    for sizes in ([53], [1] * 53, *(_random_sizes(53, rng, 2 * model.chunk_frames) for _ in range(4))):
        torch.testing.assert_close(_stream(model, x, sizes), offline, atol=ATOL, rtol=0)


def test_explicit_gru_streams_like_offline():
    model = _model("gru").with_explicit_gru()
    x = _features(model, 30)
    with torch.no_grad():
        offline = model(x)
    torch.testing.assert_close(_stream(model, x, [4, 9, 1, 16]), offline, atol=ATOL, rtol=0)


@pytest.mark.parametrize("profile", ["emg2qwerty", "armband8"])
def test_gru_with_conv_front_and_layer_norm_streams_any_chunking(profile):
    """The conv blocks' caches are state like h; the explicit export GRU gives the same emissions."""
    model = _model("gru", profile, layer_norm=True, conv_dilations=(1, 2, 4), conv_channels=12)
    shapes = model.state_shapes(2)
    assert shapes["conv_cache_0"] == (2, 2, 12) and shapes["conv_cache_2"] == (8, 2, 12), shapes
    x = _features(model, 41)
    with torch.no_grad():
        offline = model(x)
        # the conv front is causal: changing the future leaves the past emissions alone
        later = x.clone()
        later[30:] += 1.0
        torch.testing.assert_close(model(later)[:30], offline[:30], atol=ATOL, rtol=0)
    rng = random.Random(profile)
    for sizes in ([41], [1] * 41, *(_random_sizes(41, rng, 16) for _ in range(3))):
        torch.testing.assert_close(_stream(model, x, sizes), offline, atol=ATOL, rtol=0)
    explicit = model.with_explicit_gru()
    torch.testing.assert_close(_stream(explicit, x, [5, 17, 19]), offline, atol=ATOL, rtol=0)


def test_gru_options_off_keep_the_parameter_names():
    """A GRU checkpoint from before ``layer_norm`` / ``conv_dilations`` existed (its stored config lacks them, so
    the dataclass defaults apply) loads unchanged; new GRUs get the LayerNorm from ``default_config``."""
    assert default_config("gru", "armband8").layer_norm and not GRUConfig().layer_norm
    names = set(_model("gru", layer_norm=False).state_dict())
    assert not any(n.startswith(("in_norm", "out_norm", "conv_")) for n in names), sorted(names)
    assert set(_model("gru").state_dict()) - names == {
        "in_norm.weight",
        "in_norm.bias",
        "out_norm.weight",
        "out_norm.bias",
    }


@pytest.mark.parametrize(
    ("profile", "T", "changes"),
    [
        ("emg2qwerty", 40, {}),  # chunk 5, look-ahead 3; T a multiple of the chunk
        ("armband8", 43, {}),  # short last chunk
        ("emg2qwerty", 29, {"chunk_frames": 4, "lookahead_frames": 7}),  # look-ahead longer than a chunk
        ("armband8", 23, {"lookahead_frames": 0}),  # no look-ahead: chunk-local backward direction only
        ("emg2qwerty", 3, {}),  # shorter than one chunk
    ],
)
def test_bilstm_streams_aligned_chunks(profile, T, changes):
    model = _model("bilstm", profile, **changes)
    x = _features(model, T)
    with torch.no_grad():
        offline = model(x)
    assert offline.shape[0] == T
    torch.testing.assert_close(_stream(model, x, _aligned_sizes(T, model.chunk_frames)), offline, atol=ATOL, rtol=0)


def test_bilstm_rejects_chunks_longer_than_a_block():
    model = _model("bilstm")
    with pytest.raises(AssertionError, match=r"chunks are 1\.\."):
        model.forward_chunk(_features(model, model.chunk_frames + 1), model.init_state(2))


@pytest.mark.parametrize("name", STREAMING_MODELS)
def test_state_is_explicit_and_not_mutated(name):
    model = _model(name)
    shapes = model.state_shapes(3)
    state = model.init_state(3)
    assert list(state) == list(shapes), "init_state lists states in state_shapes order"
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    # a non-zero state, so an in-place update could not hide behind zeros
    state = {k: torch.randn(v.shape) for k, v in state.items()}
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        out, new = model.forward_chunk(_features(model, model.chunk_frames, N=3), state)
        out2, _ = model.forward_chunk(_features(model, model.chunk_frames, N=3), state)
    for k in state:
        torch.testing.assert_close(state[k], before[k], atol=0, rtol=0)
        assert new[k].shape == state[k].shape
    torch.testing.assert_close(out, out2, atol=0, rtol=0)  # same input and state: same output
    with pytest.raises(AssertionError, match="state keys"):
        model.forward_chunk(_features(model, 1, N=3), {})


def test_streaming_geometry_is_declared():
    assert _model("gru").lookahead_frames == 0 and _model("tcn").lookahead_frames == 0
    tcn = _model("tcn")
    assert sum(s[0] for s in tcn.state_shapes().values()) == tcn.receptive_field - 1
    bilstm = _model("bilstm")
    assert bilstm.state_shapes()["lookahead"][0] == bilstm.lookahead_frames

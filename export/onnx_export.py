"""ONNX export of the streaming students: a fixed-chunk streaming graph and an offline graph.

Streaming graph (what a device runs)::

    (features (chunk, 1, bands, C, freq), *states) -> (log_probs (chunk, 1, 99), *states_out)

with the inputs named ``features`` and the model's state names (``h`` for the GRU,
``conv_cache_<i>`` for the TCN, ``h``/``c``/``lookahead`` for the BiLSTM), and the
outputs ``log_probs`` and ``<state>_out`` (``emgkey.bundle.StreamingSignature``).

Offline graph (for evaluation): ``features (T, 1, bands, C, freq) -> log_probs``
with a dynamic time axis where the model allows it. The legacy TorchScript
exporter keeps RNN time axes dynamic (``nn.GRU`` becomes an ONNX ``GRU`` node); the
dynamo exporter, and any model whose Python code loops over time (ExplicitGRU,
the BiLSTM's blocks), bakes the traced length in. ``check_time_axis`` runs the
exported graph at another length and says which it got, so a baked graph is
declared as fixed-length instead of failing on a device.

Before export, recurrent layers are rewritten as plain matrix products
(``prepare_for_export``): the GRU through ``GRUModel.with_explicit_gru``, the
BiLSTM's ``nn.LSTM`` layers through ``ExplicitLSTM`` here. Quantizers then see
MatMul/Gemm nodes and store the recurrent weights in 8 bits; ONNX ``GRU``/``LSTM``
nodes would stay float under static quantization.

``onnx`` and ``onnxruntime`` are imported where they are used.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey import __version__, charset
from emgkey.bundle import StreamingSignature, TensorSpec
from emgkey.train.models.common import StreamingModel

OPSET = 17
METADATA_KEY = "emgkey"


# ---- export-time module rewrites --------------------------------------------------------------


class ExplicitLSTM(nn.Module):
    """One-layer, unidirectional, time-first ``nn.LSTM`` written as matrix products.

    Same parameter names as ``nn.LSTM`` (``weight_ih_l0`` (4H, D), gates i, f, g, o), so
    ``load_state_dict`` works both ways. The input projection of every step is one
    MatMul; the recurrent product is unrolled over the (fixed) chunk when traced.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H = hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * H))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * H))
        bound = 1.0 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> ExplicitLSTM:
        assert lstm.num_layers == 1 and not lstm.bidirectional and not lstm.batch_first and lstm.bias, (
            "ExplicitLSTM replaces one-layer, unidirectional, time-first LSTMs with biases"
        )
        assert getattr(lstm, "proj_size", 0) == 0, "projections are not supported"
        out = cls(lstm.input_size, lstm.hidden_size)
        out.load_state_dict(lstm.state_dict())
        return out.to(next(lstm.parameters()).device)

    def forward(self, x: Tensor, hc: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (T, N, D), hc ((1, N, H), (1, N, H)) -> (y (T, N, H), (h_n, c_n))."""
        T, N, _ = x.shape
        # From a zero state (hc None) the first step's recurrent product is just its bias: no
        # MatMul against a constant zero matrix, which quantizers would leave in float.
        h: Tensor | None = None if hc is None else hc[0][0]  # (N, H)
        c: Tensor | None = None if hc is None else hc[1][0]
        gi = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # (T, N, 4H)
        outs = []
        for t in range(T):
            g = gi[t] + (self.bias_hh_l0 if h is None else F.linear(h, self.weight_hh_l0, self.bias_hh_l0))
            i, f, gg, o = g.chunk(4, dim=-1)  # (N, H) each
            c = (
                torch.sigmoid(i) * torch.tanh(gg)
                if c is None
                else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            )
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        if h is None or c is None:  # T == 0 from a zero state
            z = x.new_zeros(1, N, self.hidden_size)
            return x.new_zeros(0, N, self.hidden_size), (z, z)
        return torch.stack(outs, dim=0), (h[None], c[None])


def prepare_for_export(model: nn.Module, explicit_rnn: bool = True) -> nn.Module:
    """A copy in eval mode, on CPU, with RNNs as matrix products when ``explicit_rnn``.

    The checkpoint's model is left untouched.
    """
    from emgkey.train.models.bilstm import BiLSTMModel
    from emgkey.train.models.gru import GRUModel

    m = copy.deepcopy(model).cpu().eval()
    if explicit_rnn:
        if isinstance(m, GRUModel) and m.config.rnn_impl != "explicit":
            m = m.with_explicit_gru()
        if isinstance(m, BiLSTMModel):
            for layer in m.layers:
                for attr in ("fwd", "bwd"):
                    mod = getattr(layer, attr)
                    if isinstance(mod, nn.LSTM):
                        setattr(layer, attr, ExplicitLSTM.from_lstm(mod))
    return m.eval()


# ---- wrappers with flat, named inputs and outputs ---------------------------------------------


class StreamingWrapper(nn.Module):
    """``forward(features, *states) -> (log_probs, *states_out)`` in ``state_shapes`` order."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model
        self.state_names = list(model.state_shapes(1))

    def forward(self, features: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        log_probs, new = self.model.forward_chunk(features, dict(zip(self.state_names, states, strict=True)))
        return (log_probs, *(new[k] for k in self.state_names))


class OfflineWrapper(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> Tensor:
        return self.model(features)


def streaming_signature(model: StreamingModel, batch_size: int = 1) -> StreamingSignature:
    c = model.config
    m = model.chunk_frames
    return StreamingSignature(
        chunk_frames=m,
        lookahead_frames=model.lookahead_frames,
        output_delay_frames=model.lookahead_frames,
        features=TensorSpec("features", (m, batch_size, c.n_bands, c.channels, c.n_freq)),
        states=tuple(TensorSpec(k, tuple(s)) for k, s in model.state_shapes(batch_size).items()),
        log_probs=TensorSpec("log_probs", (m, batch_size, c.num_classes)),
    )


def example_inputs(sig: StreamingSignature, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sig.features.shape, generator=g)
    return (x, *(0.1 * torch.randn(s.shape, generator=g) for s in sig.states))


# ---- metadata ------------------------------------------------------------------------------------


def metadata(
    model: StreamingModel,
    *,
    profile: Mapping[str, Any] | None,
    feature_config: Mapping[str, Any] | None,
    graph: str,
    precision: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's essentials, for ONNX ``metadata_props`` (and a TFLite sidecar-free check)."""
    return {
        "emgkey_version": __version__,
        "model": {"name": model.config.name, "config": model.config.to_dict()},
        "profile": dict(profile or {}),
        "features": dict(feature_config or {}),
        "streaming": streaming_signature(model).to_dict(),
        "charset": {"num_classes": charset.NUM_CLASSES, "blank": charset.BLANK},
        "graph": graph,
        "precision": precision,
        **dict(extra or {}),
    }


def set_metadata(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta`` as JSON under ``metadata_props["emgkey"]`` (replacing what was there)."""
    import onnx

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props if p.key != METADATA_KEY}
    props[METADATA_KEY] = json.dumps(meta, sort_keys=True)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    m.producer_name = "emgkey"
    m.producer_version = __version__
    onnx.save(m, str(path))


def compact_names(path: str | Path) -> None:
    """Short node and intermediate tensor names (``n12``, ``t34``), keeping graph inputs and outputs.

    An RNN unrolled over a chunk has thousands of nodes whose exporter names
    (``/model/layers.0/fwd/Sigmoid_12_output_0``) cost more bytes than an int8 weight
    matrix; renaming changes nothing else.
    """
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    # Identity over an initializer (the exporter's way to share a weight): use the initializer itself.
    init_names = {t.name for t in g.initializer}
    out_names = {v.name for v in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in init_names}
    alias = {k: v for k, v in alias.items() if k not in out_names}
    if alias:
        nodes = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
        for n in nodes:
            for j, x in enumerate(n.input):
                if x in alias:
                    n.input[j] = alias[x]
        del g.node[:]
        g.node.extend(nodes)
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {t.name for t in g.initializer}
    mapping: dict[str, str] = {}
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        for j, o in enumerate(node.output):
            if o and o not in keep and o not in mapping:
                mapping[o] = f"t{len(mapping)}"
            if o in mapping:
                node.output[j] = mapping[o]
        for j, x in enumerate(node.input):
            if x in mapping:
                node.input[j] = mapping[x]
    for vi in g.value_info:
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    inits = {}
    for k, t in enumerate(g.initializer):
        if t.name in {v.name for v in g.input}:
            continue
        inits[t.name] = f"w{k}"
    for t in g.initializer:
        if t.name in inits:
            t.name = inits[t.name]
    for node in g.node:
        for j, x in enumerate(node.input):
            if x in inits:
                node.input[j] = inits[x]
    onnx.save(m, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == METADATA_KEY:
            return dict(json.loads(p.value))
    return {}


# ---- export --------------------------------------------------------------------------------------


def export_streaming(
    model: StreamingModel, path: str | Path, *, opset: int = OPSET, meta: Mapping[str, Any] | None = None
) -> StreamingSignature:
    """The fixed-chunk streaming graph of an already prepared (``prepare_for_export``) model."""
    path = Path(path)
    sig = streaming_signature(model)
    wrapper = StreamingWrapper(model).eval()  # torch.onnx.export restores the *wrapper's* mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example_inputs(sig),
            str(path),
            input_names=["features", *(s.name for s in sig.states)],
            output_names=["log_probs", *sig.state_output_names],
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    compact_names(path)
    if meta is not None:
        set_metadata(path, meta)
    return sig


def export_offline(
    model: nn.Module,
    path: str | Path,
    *,
    trace_frames: int,
    dynamic_time: bool = True,
    opset: int = OPSET,
    meta: Mapping[str, Any] | None = None,
    dynamo: bool = False,
) -> None:
    """``features (T, 1, bands, C, freq) -> log_probs (T, 1, 99)``, traced at ``trace_frames``."""
    c: Any = model.config
    x = torch.randn(trace_frames, 1, c.n_bands, c.channels, c.n_freq, generator=torch.Generator().manual_seed(1))
    wrapper = OfflineWrapper(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kwargs: dict[str, Any] = {"dynamo": True}
            if dynamic_time:
                kwargs["dynamic_shapes"] = {"features": {0: torch.export.Dim("T", min=2, max=1 << 20)}}
            torch.onnx.export(wrapper, (x,), str(path), input_names=["features"], output_names=["log_probs"], **kwargs)
        else:
            torch.onnx.export(
                wrapper,
                (x,),
                str(path),
                input_names=["features"],
                output_names=["log_probs"],
                dynamic_axes={"features": {0: "T"}, "log_probs": {0: "T_out"}} if dynamic_time else None,
                opset_version=opset,
                dynamo=False,
            )
    if meta is not None:
        set_metadata(path, meta)


def check_time_axis(
    path: str | Path, model: nn.Module, trace_frames: int, probe_frames: tuple[int, ...] = (), atol: float = 1e-4
) -> dict[str, Any]:
    """Does the offline graph really accept other lengths? Runs it at lengths it was not traced at.

    Returns ``{"time_axis": "dynamic" | "fixed", "frames": trace_frames | None, "why": ...}``;
    ``"fixed"`` when the declared output time axis is a number, or when a probe length
    fails to run or gives other numbers than the torch model.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_dim = sess.get_outputs()[0].shape[0]
    in_dim = sess.get_inputs()[0].shape[0]
    if isinstance(in_dim, int):
        return {"time_axis": "fixed", "frames": int(in_dim), "why": "the input time axis is a fixed number"}
    c: Any = model.config
    probes = probe_frames or (trace_frames + 7, max(2, trace_frames // 2 + 3))
    problems = []
    if isinstance(out_dim, int):
        problems.append(f"declared output time axis is the number {out_dim} (baked at export)")
    for T in probes:
        x = torch.randn(T, 1, c.n_bands, c.channels, c.n_freq, generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            ref = model(x).numpy()
        try:
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            problems.append(f"T={T}: fails to run ({str(exc).splitlines()[0][:160]})")
            continue
        if got.shape != ref.shape:
            problems.append(f"T={T}: output shape {got.shape}, torch gives {ref.shape}")
        elif not np.allclose(got, ref, atol=atol, rtol=0):
            problems.append(f"T={T}: max |diff| {float(np.abs(got - ref).max()):.3g} from torch")
    if problems:
        return {"time_axis": "fixed", "frames": int(trace_frames), "why": "; ".join(problems)}
    return {"time_axis": "dynamic", "frames": None, "why": f"matches torch at T={list(probes)}"}


def export_offline_checked(
    model: nn.Module, path: str | Path, *, trace_frames: int, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Offline graph with a dynamic time axis when it really is dynamic, else fixed at ``trace_frames``.

    RNNs export best as ``nn.GRU``/``nn.LSTM`` here (ONNX ``GRU``/``LSTM`` nodes loop over any
    length), so the float offline graph uses the model as trained.
    """
    export_offline(model, path, trace_frames=trace_frames, dynamic_time=True, meta=None)
    info = check_time_axis(path, model, trace_frames)
    if info["time_axis"] == "fixed":
        export_offline(model, path, trace_frames=trace_frames, dynamic_time=False, meta=None)
    if meta is not None:
        set_metadata(path, {**meta, "offline": info})
    return info

"""Single-scale triple attention and its two dual ablations (KS-DETR, Zhao & Ukita 2023; spec §4.1, §4.3).

One self-attention with a packed input projection computes a *student* attention (the baseline's) and one or
two *teacher* attentions on GT-enhanced tokens ``X^t = sMLP(X, M)``:

* ``triple``: packed ``in_proj`` [6C, C] = q, k, v, q^t, k^t, v^t. Teacher 1 (share V) computes its own
  weights A^t from X^t + P and uses the student's values: A^t V. Teacher 2 (share A) uses the student's
  weights (same dropout sample) with its own values from X^t: A V^t.
* ``dual_share_a``: [4C, C] = q, k, v, v^t; one teacher A V^t (only V^t sees X^t).
* ``dual_share_v``: [5C, C] = q, k, v, q^t, k^t; one teacher A^t V (only Q^t, K^t see X^t + P).

The output projection, both LayerNorms and the FFN are shared by all branches, so each branch yields a full
encoder-layer output. The student path uses only rows ``[:3C]`` and never a teacher quantity: it is exactly
the baseline post-norm encoder layer (``self_attn -> norm -> ffn -> norm``), and a KS checkpoint sliced to
``[:3C]`` loads into the baseline.

Tensors are sequence-first: tokens ``(N, B, C)``, positional embedding ``(N, B, C)``, key padding mask
``(B, N)`` bool with True = padded.
"""
import copy
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detrex.layers import CheckpointableLayer

__all__ = [
    "TEACHER_PROJECTIONS",
    "MultiheadTripleAttention",
    "KSMultiheadTripleAttention",
    "KSTripleAttnEncoderLayer",
    "KSEncoderMixin",
]

# number of extra C-row blocks in the packed projection, per mode
TEACHER_PROJECTIONS = {"triple": 3, "dual_share_a": 1, "dual_share_v": 2}


class MultiheadTripleAttention(nn.Module):
    """The ``attn`` submodule: packed projections and the shared ``out_proj``.

    Parameter names match ``nn.MultiheadAttention`` (``in_proj_weight`` [(3+t)C, C], ``in_proj_bias``,
    ``out_proj``) so the first 3C rows are a drop-in baseline attention.

    Init reproduces the authors' (spec §4.1, §10.1 item 5): xavier-uniform on the *whole* packed matrix
    (a smaller bound than a [3C, C] matrix gets), zero biases.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, mode: str = "triple"):
        super().__init__()
        if mode not in TEACHER_PROJECTIONS:
            raise ValueError(f"MultiheadTripleAttention: mode={mode!r}; choose one of {tuple(TEACHER_PROJECTIONS)}.")
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiheadTripleAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}.")
        self.embed_dim, self.num_heads, self.dropout, self.mode = embed_dim, num_heads, float(dropout), mode
        self.head_dim = embed_dim // num_heads
        n = 3 + TEACHER_PROJECTIONS[mode]
        self.in_proj_weight = nn.Parameter(torch.empty(n * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(n * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    @property
    def num_branches(self) -> int:
        return 3 if self.mode == "triple" else 2

    # -- pieces ---------------------------------------------------------------------------------------
    def _proj(self, x: torch.Tensor, block: int) -> torch.Tensor:
        C = self.embed_dim
        return F.linear(x, self.in_proj_weight[block * C:(block + 1) * C], self.in_proj_bias[block * C:(block + 1) * C])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        N, B, _ = x.shape  # (N, B, C) -> (B*heads, N, d)
        return x.reshape(N, B * self.num_heads, self.head_dim).transpose(0, 1)

    def _merge_heads(self, x: torch.Tensor, B: int) -> torch.Tensor:
        N = x.shape[1]  # (B*heads, N, d) -> (N, B, C)
        return x.transpose(0, 1).reshape(N, B, self.embed_dim)

    def _weights(self, q, k, key_padding_mask, B: int) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d)) over keys, padded keys at -inf, then dropout (a fresh sample per call)."""
        logits = torch.bmm(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(1, 2))
        if key_padding_mask is not None:
            N, M = logits.shape[1:]
            logits = logits.view(B, self.num_heads, N, M).masked_fill(
                key_padding_mask.bool()[:, None, None, :], float("-inf")).view(B * self.num_heads, N, M)
        attn = logits.softmax(dim=-1)
        return F.dropout(attn, p=self.dropout, training=self.training)

    # -- forward --------------------------------------------------------------------------------------
    def forward_student(self, query, key, value, key_padding_mask=None, attn_mask=None) -> torch.Tensor:
        """Baseline multi-head attention with rows [:3C] (torch's own kernel). Returns out_proj(A V), (N, B, C)."""
        C = self.embed_dim
        return F.multi_head_attention_forward(
            query, key, value, C, self.num_heads,
            self.in_proj_weight[:3 * C], self.in_proj_bias[:3 * C], None, None, False,
            self.dropout, self.out_proj.weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
        )[0]

    def forward(self, x_qk: torch.Tensor, x_v: torch.Tensor, xt_qk: torch.Tensor, xt_v: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Student and teacher attentions (self-attention).

        Args:
            x_qk, x_v: student query/key input (X + P) and value input (X), (N, B, C).
            xt_qk, xt_v: teacher inputs (X^t + P) and X^t, (N, B, C).
            key_padding_mask: (B, N) bool, True = padded.
        Returns:
            [Z_student, Z_teacher1, (Z_teacher2)], each out_proj(O_k) of shape (N, B, C). For ``triple``:
            teacher 1 shares V, teacher 2 shares A; for the duals the single teacher is the named one.
        """
        B = x_qk.shape[1]
        q, k, v = (self._split_heads(self._proj(t, i)) for i, t in enumerate((x_qk, x_qk, x_v)))
        attn = self._weights(q, k, key_padding_mask, B)
        outs = [torch.bmm(attn, v)]
        if self.mode in ("triple", "dual_share_v"):  # share V: own weights A^t, the student's V
            qt, kt = self._split_heads(self._proj(xt_qk, 3)), self._split_heads(self._proj(xt_qk, 4))
            outs.append(torch.bmm(self._weights(qt, kt, key_padding_mask, B), v))
        if self.mode in ("triple", "dual_share_a"):  # share A: the student's A (same dropout sample), own V^t
            vt = self._split_heads(self._proj(xt_v, 5 if self.mode == "triple" else 3))
            outs.append(torch.bmm(attn, vt))
        return [self.out_proj(self._merge_heads(o, B)) for o in outs]

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, mode={self.mode!r}"


class KSMultiheadTripleAttention(nn.Module):
    """``attentions.0`` of the KS encoder layer: ``attn`` plus the residual and ``proj_drop``.

    ``forward`` has the signature of detrex's ``MultiheadAttention`` wrapper and runs the student only;
    ``forward_teachers`` runs all branches. Only sequence-first (``batch_first=False``) tokens are supported,
    as in the single-scale DETRs.
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 mode: str = "triple", batch_first: bool = False):
        super().__init__()
        if batch_first:
            raise ValueError("KSMultiheadTripleAttention supports batch_first=False only (tokens (N, B, C)).")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, False
        self.attn = MultiheadTripleAttention(embed_dim, num_heads, attn_drop, mode)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_pos=None,
                attn_mask=None, key_padding_mask=None, **kwargs) -> torch.Tensor:
        """Student only: identity + proj_drop(MHA(query+query_pos, key+key_pos, value)) with rows [:3C]."""
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        out = self.attn.forward_student(q, k, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        return identity + self.proj_drop(out)

    def forward_teachers(self, query, teacher_query, query_pos=None, key_padding_mask=None) -> List[torch.Tensor]:
        """All branches of the self-attention on ``query`` (X) and ``teacher_query`` (X^t), both (N, B, C).

        Returns [X + proj_drop(Z_k)] per branch (student first); each branch draws its own dropout sample.
        """
        pos = 0 if query_pos is None else query_pos
        zs = self.attn(query + pos, query, teacher_query + pos, teacher_query, key_padding_mask)
        return [query + self.proj_drop(z) for z in zs]


class KSTripleAttnEncoderLayer(CheckpointableLayer, nn.Module):
    """Post-norm encoder layer ``self_attn -> norm -> ffn -> norm`` with triple (or dual) attention.

    Submodule names follow detrex's ``BaseTransformerLayer`` (``attentions.0``, ``ffns.0``, ``norms.0/1``), so
    the authors' keys load. ``ffn`` is a detrex-style FFN whose ``forward(x)`` returns ``x + layers(x)``;
    ``norm`` is copied once per norm position. The same ``attentions.0.attn.out_proj``, ``norms.0``,
    ``ffns.0`` and ``norms.1`` objects process every branch.

    ``forward`` (the baseline layer's call signature) runs the student only and returns (N, B, C);
    ``forward_teachers`` also runs the teachers and returns ``(E_student, [E_teacher, ...])``. Both are
    checkpointed as one unit when ``use_checkpoint`` is set (`detrex.layers.set_activation_checkpoint`).
    """

    operation_order = ("self_attn", "norm", "ffn", "norm")

    def __init__(self, attn: KSMultiheadTripleAttention, ffn: nn.Module, norm: nn.Module):
        super().__init__()
        if not isinstance(attn, KSMultiheadTripleAttention):
            raise TypeError(f"KSTripleAttnEncoderLayer: attn must be a KSMultiheadTripleAttention, got {type(attn).__name__}.")
        self.attentions = nn.ModuleList([attn])
        self.ffns = nn.ModuleList([ffn])
        self.norms = nn.ModuleList([copy.deepcopy(norm), copy.deepcopy(norm)])
        self.embed_dim = attn.embed_dim
        self.pre_norm = False
        self.batch_first = False

    @property
    def mode(self) -> str:
        return self.attentions[0].attn.mode

    def _after_attention(self, y: torch.Tensor) -> torch.Tensor:
        return self.norms[1](self.ffns[0](self.norms[0](y)))

    def forward(self, query, key=None, value=None, query_pos=None, key_pos=None, attn_masks=None,
                query_key_padding_mask=None, key_padding_mask=None, **kwargs) -> torch.Tensor:
        """Student path (= the baseline encoder layer ``BaseTransformerLayer``): self-attention on ``query``
        with ``query_pos`` for queries and keys and ``query_key_padding_mask`` (B, N) on the keys.
        ``key``/``value``/``key_padding_mask`` (cross-attention inputs) and extra keywords are ignored."""
        attn_mask = attn_masks[0] if isinstance(attn_masks, (list, tuple)) else attn_masks
        y = self.attentions[0](query, query, query, query, query_pos, query_pos, attn_mask, query_key_padding_mask)
        return self._after_attention(y)

    def forward_teachers(self, query, teacher_query, query_pos=None,
                         key_padding_mask=None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Student and teacher outputs.

        Args:
            query: X (N, B, C), the layer input without positional embedding.
            teacher_query: X^t = sMLP(X, M), (N, B, C).
            query_pos: P (N, B, C), already scaled (DAB's query_scale), shared by all branches.
            key_padding_mask: (B, N) bool, True = padded.
        Returns:
            (E_student, [E_teacher1, E_teacher2]) for ``triple`` (teacher 1 shares V, teacher 2 shares A),
            (E_student, [E_teacher]) for the duals; all (N, B, C).
        """
        return self.run_checkpointed(self._forward_teachers, query, teacher_query, query_pos, key_padding_mask)

    def _forward_teachers(self, query, teacher_query, query_pos, key_padding_mask):
        ys = self.attentions[0].forward_teachers(query, teacher_query, query_pos, key_padding_mask)
        outs = [self._after_attention(y) for y in ys]
        return outs[0], outs[1:]


class KSEncoderMixin:
    """Turns a single-scale post-norm DETR encoder into a KS encoder (DAB-, DN- and Conditional-DETR).

    Mix in before the baseline encoder class (a ``TransformerLayerSequence`` with ``layers`` and
    ``post_norm_layer``) and call `install_ks_layer` at the end of ``__init__``. It replaces the last layer
    by a `KSTripleAttnEncoderLayer` built from that layer's settings (heads, attention dropout, FFN,
    LayerNorm), in place, so state-dict key names and order stay the baseline's. ``forward`` stays the
    baseline (student) encoder; `forward_teachers` also returns the teacher memories.

    Subclasses whose encoder transforms the positional embedding per layer override `layer_pos`
    (DAB-/DN-DETR: ``P * query_scale(X)``); the default is the plain ``P`` (Conditional-DETR).
    """

    def install_ks_layer(self, ks_mode: str = "triple", proj_drop: float = 0.0) -> None:
        template = self.layers[-1]
        if not hasattr(template, "ffns") or len(template.ffns) != 1 or len(template.norms) != 2:
            raise ValueError(f"{type(self).__name__}: the regular layers must be post-norm "
                             "('self_attn', 'norm', 'ffn', 'norm') to build the KS layer from them.")
        base_attn = template.attentions[0]
        attn = KSMultiheadTripleAttention(
            base_attn.embed_dim, base_attn.num_heads, attn_drop=base_attn.attn.dropout, proj_drop=proj_drop,
            mode=ks_mode, batch_first=base_attn.batch_first,
        )
        self.layers[-1] = KSTripleAttnEncoderLayer(attn, copy.deepcopy(template.ffns[0]), template.norms[0])
        self.ks_mode = ks_mode

    def layer_pos(self, query: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """Positional embedding a layer with input ``query`` uses (baseline DETR: ``query_pos`` itself)."""
        return query_pos

    def forward_teachers(self, query, query_pos, query_key_padding_mask, teacher_tokens):
        """Encode with the teachers.

        Args:
            query: (N, B, C) tokens; query_pos: (N, B, C); query_key_padding_mask: (B, N) True = pad.
            teacher_tokens: ``f(x, padding_mask=...) -> X^t`` (the detector's sMLP bound to this batch's GT
                token mask), applied to the KS layer's input.
        Returns:
            student memory (N, B, C) and the teacher memories [(N, B, C), ...] (share V first, then share A).
        """
        for layer in self.layers[:-1]:
            query = layer(query, None, None, query_pos=self.layer_pos(query, query_pos),
                          query_key_padding_mask=query_key_padding_mask)
        teacher_query = teacher_tokens(query, padding_mask=query_key_padding_mask)
        memory, teachers = self.layers[-1].forward_teachers(
            query, teacher_query, self.layer_pos(query, query_pos), query_key_padding_mask)
        if self.post_norm_layer is not None:
            memory = self.post_norm_layer(memory)
            teachers = [self.post_norm_layer(t) for t in teachers]
        return memory, teachers

"""The trainable text-to-layout model: a small masked label-token transformer (MaskGIT-style) with a dense head.

Text side: either a small learned encoder over caption words (`text_encoder = "words"`, enough for the built-in
procedural scenes and COCO captions) or a projection of a (B, L, 768) context in the SD1.5 CLIP text space
(`text_encoder = "clip"`), which is exactly what KOSMOS-G's AlignerNet produces, so image prompts work too.

Layout side: a G x G grid of label tokens (each the majority class of a cell, or MASK). Grid tokens self-attend and
cross-attend to the text; two heads read them: a token head (class logits per cell, used for iterative sampling) and
a dense head that upsamples to the output resolution and predicts per-pixel class logits plus an instance-boundary
logit (so that touching instances of one class can still be separated and counted).

Training (see training/stages/layout.py): a random fraction of cells is masked (all of them with probability
`p_full_mask`, which is the deterministic inference mode); losses = dense cross-entropy (255 ignored) + token
cross-entropy on masked cells + boundary BCE. Inference: `predict` (one pass from an all-MASK grid, argmax) or
`sample` (MaskGIT decoding: T steps, each keeping the most confident sampled cells, then one dense pass).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .labels import IGNORE, NUM_CLASSES


@dataclass(frozen=True)
class LayoutModelConfig:
    text_encoder: str = "words"  # "words" (learned word embeddings) | "clip" (a (B,L,context_dim) context)
    vocab_size: int = 1024  # words mode: size of the word table (PAD=0, UNK=1 included)
    max_words: int = 64
    context_dim: int = 768  # clip mode: last dim of the context (SD1.5 CLIP text space)
    dim: int = 128
    heads: int = 4
    text_layers: int = 1
    layers: int = 3
    mlp_ratio: int = 4
    grid: int = 8  # label-token grid (G x G)
    out_size: int = 32  # dense output resolution (a multiple of grid)
    pixel_dim: int = 32  # per-pixel embedding width of the dense head
    num_classes: int = NUM_CLASSES
    dropout: float = 0.0
    mention_tokens: bool = True  # add one token per parsed noun mention (class + count) to the text
    max_mentions: int = 16
    max_count: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayoutModelConfig:
        return cls(**d)


PRESETS: dict[str, LayoutModelConfig] = {
    "tiny": LayoutModelConfig(vocab_size=256, dim=32, heads=2, text_layers=1, layers=1, grid=4, out_size=16,
                              pixel_dim=16),
    "tiny_clip": LayoutModelConfig(text_encoder="clip", dim=32, heads=2, text_layers=1, layers=1, grid=4,
                                   out_size=16, pixel_dim=16),
    "small": LayoutModelConfig(),
    "small_clip": LayoutModelConfig(text_encoder="clip"),
}

PAD, UNK = 0, 1


class WordVocab:
    """Lower-case word vocabulary of the caption encoder, built from training captions; stored in checkpoints."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z]+|\d+|[;,.]", text.lower().replace("-", " "))

    @classmethod
    def build(cls, captions: Iterable[str], size: int, extra: Iterable[str] = ()) -> WordVocab:
        counts = Counter(w for c in captions for w in cls.split(c))
        for w in extra:
            counts[w] += 1
        words = ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(size - 2)]
        return cls(words)

    def encode(self, text: str, max_words: int) -> list[int]:
        return [self.index.get(w, UNK) for w in self.split(text)][:max_words]

    def batch(self, texts: Sequence[str], max_words: int) -> Tensor:
        """(B, L) long, right-padded with PAD; L = longest caption (at least 1)."""
        ids = [self.encode(t, max_words) or [UNK] for t in texts]
        out = torch.full((len(ids), max(len(i) for i in ids)), PAD, dtype=torch.long)
        for b, row in enumerate(ids):
            out[b, : len(row)] = torch.tensor(row)
        return out

    def to_json(self) -> str:
        return json.dumps(self.words)

    @classmethod
    def from_json(cls, text: str) -> WordVocab:
        return cls(json.loads(text))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, key_padding: Tensor | None = None) -> Tensor:
        """x (B,N,D); context (B,M,Dc) or None (self-attention); key_padding (B,M) True = padded (ignored)."""
        b, n, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention to the text, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, cross: bool, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(dim)
            self.xattn = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor | None = None, text: Tensor | None = None,
                text_pad: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_padding=pad))
        if self.cross:
            x = x + self.drop(self.xattn(self.norm2(x), text, text_pad))
        return x + self.drop(self.mlp(self.norm3(x)))


class TextToLayoutModel(nn.Module):
    def __init__(self, config: LayoutModelConfig):
        super().__init__()
        c = self.config = config
        if c.text_encoder == "words":
            self.word_embed = nn.Embedding(c.vocab_size, c.dim, padding_idx=PAD)
            self.word_pos = nn.Parameter(torch.zeros(c.max_words, c.dim))
        elif c.text_encoder == "clip":
            self.context_proj = nn.Sequential(nn.LayerNorm(c.context_dim), nn.Linear(c.context_dim, c.dim))
            self.word_pos = nn.Parameter(torch.zeros(c.max_words if c.max_words >= 77 else 77, c.dim))
        else:
            raise ValueError(f"text_encoder must be 'words' or 'clip', got {c.text_encoder!r}")
        if c.mention_tokens:
            # Nouns the rule-based parser finds in the caption, as (class, count) tokens: an explicit, vocabulary-
            # independent statement of what must appear and how often; the words still carry the relations.
            self.mention_class = nn.Embedding(c.num_classes, c.dim)
            self.mention_count = nn.Embedding(c.max_count + 1, c.dim)
        self.text_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, False, c.dropout) for _ in range(c.text_layers))
        self.text_norm = nn.LayerNorm(c.dim)
        self.mask_token = c.num_classes  # token id of a masked cell
        self.token_embed = nn.Embedding(c.num_classes + 1, c.dim)
        self.grid_pos = nn.Parameter(torch.randn(c.grid * c.grid, c.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, True, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.token_head = nn.Linear(c.dim, c.num_classes)
        if c.out_size % c.grid:
            raise ValueError(f"out_size {c.out_size} must be a multiple of grid {c.grid}")
        self.cell = c.out_size // c.grid
        # Each token paints its cell x cell patch of pixel embeddings (a learned pixel shuffle); a 3x3 conv smooths
        # across cell borders; a 1x1 conv reads classes + the instance boundary. Far cheaper than a conv upsampler.
        self.to_pixels = nn.Linear(c.dim, self.cell * self.cell * c.pixel_dim)
        self.refine = nn.Sequential(nn.Conv2d(c.pixel_dim, c.pixel_dim, 3, padding=1), nn.GELU())
        self.dense_head = nn.Conv2d(c.pixel_dim, c.num_classes + 1, 1)  # classes + instance boundary
        nn.init.normal_(self.word_pos, std=0.02)

    # -- text ----------------------------------------------------------------------------------------------------
    def encode_text(self, words: Tensor | None = None, context: Tensor | None = None,
                    context_pad: Tensor | None = None, mentions: tuple[Tensor, Tensor] | None = None
                    ) -> tuple[Tensor, Tensor]:
        """words (B,L) long (words mode) or context (B,L,Dc) (clip mode), plus mentions = (classes (B,M) long with
        -1 padding, counts (B,M) long) -> text (B,L+M,D), padding mask (B,L+M)."""
        c = self.config
        if c.text_encoder == "words":
            if words is None:
                raise ValueError("this layout model reads caption words: pass `words` (WordVocab.batch)")
            words = words[:, : c.max_words]
            pad = words.eq(PAD)
            x = self.word_embed(words) + self.word_pos[: words.shape[1]]
        else:
            if context is None:
                raise ValueError("this layout model reads a (B,L,768) conditioning: pass `context`")
            context = context[:, : self.word_pos.shape[0]]
            pad = context_pad if context_pad is not None else torch.zeros(context.shape[:2], dtype=torch.bool,
                                                                           device=context.device)
            x = self.context_proj(context.to(self.word_pos.dtype)) + self.word_pos[: context.shape[1]]
        if c.mention_tokens and mentions is not None and mentions[0].shape[1] > 0:
            classes, counts = (t.to(x.device) for t in mentions)
            m = self.mention_class(classes.clamp(min=0)) + self.mention_count(counts.clamp(0, c.max_count))
            x = torch.cat([x, m], dim=1)
            pad = torch.cat([pad, classes.lt(0)], dim=1)
        pad = pad.clone()
        pad[:, 0] = False  # never attend to nothing
        for blk in self.text_blocks:
            x = blk(x, pad)
        return self.text_norm(x), pad

    # -- layout --------------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, text: Tensor, text_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (B,G*G) long (MASK = num_classes) -> token logits (B,G*G,C), dense logits (B,C,S,S),
        boundary logits (B,S,S)."""
        c = self.config
        x = self.token_embed(tokens) + self.grid_pos
        for blk in self.blocks:
            x = blk(x, None, text, text_pad)
        x = self.norm(x)
        token_logits = self.token_head(x)
        b, g, k = x.shape[0], c.grid, self.cell
        pix = self.to_pixels(x).view(b, g, g, k, k, c.pixel_dim)  # (B, G, G, cell, cell, P)
        pix = pix.permute(0, 5, 1, 3, 2, 4).reshape(b, c.pixel_dim, g * k, g * k)  # (B, P, S, S)
        pix = pix + self.refine(pix)
        dense = self.dense_head(pix)
        return token_logits, dense[:, : c.num_classes], dense[:, c.num_classes]

    def all_masked(self, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch, self.config.grid**2), self.mask_token, dtype=torch.long, device=device)

    @torch.no_grad()
    def predict(self, text: Tensor, text_pad: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic layout: class probabilities (B,C,S,S), boundary probability (B,S,S)."""
        _, dense, edge = self(self.all_masked(text.shape[0], text.device), text, text_pad)
        return dense.float().softmax(1), edge.sigmoid()

    @torch.no_grad()
    def sample(self, text: Tensor, text_pad: Tensor, *, steps: int = 6, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """MaskGIT decoding of the token grid (cosine schedule), then the dense head: class probabilities
        (B,C,S,S) given the drawn tokens, boundary probability (B,S,S)."""
        b, n = text.shape[0], self.config.grid**2
        tokens = self.all_masked(b, text.device)
        for t in range(steps):
            logits, _, _ = self(tokens, text, text_pad)
            probs = F.softmax(logits.float() / max(temperature, 1e-4), dim=-1)
            draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(b, n)
            conf = probs.gather(-1, draw[..., None])[..., 0]
            masked = tokens.eq(self.mask_token)
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
            keep_masked = int(math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)))
            tokens = torch.where(masked, draw, tokens)
            if keep_masked > 0:
                # re-mask the least confident newly drawn cells
                idx = conf.argsort(dim=1)[:, :keep_masked]
                tokens.scatter_(1, idx, self.mask_token)
        _, dense, edge = self(tokens, text, text_pad)
        return dense.float().softmax(1), edge.sigmoid()


def mention_batch(captions: Sequence[str], max_mentions: int = 16) -> tuple[Tensor, Tensor]:
    """Parsed noun mentions of each caption -> (classes (B,M) long, -1 = padding; counts (B,M) long), M >= 1."""
    from .prompt_parser import parse_prompt

    rows = [[(m.class_id, m.count) for m in parse_prompt(t).mentions][:max_mentions] for t in captions]
    width = max(1, max(len(r) for r in rows))
    classes = torch.full((len(rows), width), -1, dtype=torch.long)
    counts = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        for k, (cls, n) in enumerate(row):
            classes[b, k], counts[b, k] = cls, n
    return classes, counts


def coarse_tokens(labels: Tensor, grid: int, num_classes: int = NUM_CLASSES) -> Tensor:
    """Majority class of each cell: labels (B,S,S) long (255 ignored) -> (B,G*G) long, 255 for all-ignored cells."""
    b, s, _ = labels.shape
    cell = s // grid
    x = labels.view(b, grid, cell, grid, cell).permute(0, 1, 3, 2, 4).reshape(b, grid * grid, cell * cell)
    valid = x.ne(IGNORE)
    counts = torch.zeros(b, grid * grid, num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(2, x.clamp(max=num_classes - 1), valid.long())  # (B, G*G, C) pixel count per class
    out = counts.argmax(-1)
    return torch.where(counts.sum(-1) > 0, out, torch.full_like(out, IGNORE))


def instance_boundaries(instance_map: Tensor) -> Tensor:
    """(B,S,S) instance ids (0 = none) -> (B,S,S) float 1 on instance pixels that touch a *different instance*
    (4-neighbourhood): the contact lines along which touching instances are cut apart at inference. Outlines
    against background are not marked, so a small object is not all boundary at low resolution."""
    x = instance_map
    edge = torch.zeros_like(x, dtype=torch.bool)

    def contact(a: Tensor, b: Tensor) -> Tensor:
        return (a != b) & b.ne(0)

    edge[:, 1:] |= contact(x[:, 1:], x[:, :-1])
    edge[:, :-1] |= contact(x[:, :-1], x[:, 1:])
    edge[:, :, 1:] |= contact(x[:, :, 1:], x[:, :, :-1])
    edge[:, :, :-1] |= contact(x[:, :, :-1], x[:, :, 1:])
    return (edge & x.ne(0)).float()


def layout_losses(model: TextToLayoutModel, text: Tensor, text_pad: Tensor, labels: Tensor,
                  instances: Tensor | None, *, p_full_mask: float = 0.3, edge_weight: float = 0.5,
                  token_weight: float = 0.5, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Training losses for a batch: labels (B,S,S) long with 255 ignored; instances (B,S,S) long or None."""
    c = model.config
    b = labels.shape[0]
    if labels.shape[-1] != c.out_size:
        labels = F.interpolate(labels[:, None].float(), size=(c.out_size, c.out_size), mode="nearest")[:, 0].long()
        if instances is not None:
            instances = F.interpolate(instances[:, None].float(), size=(c.out_size, c.out_size), mode="nearest")[:, 0]
            instances = instances.long()
    target_tokens = coarse_tokens(labels, c.grid, c.num_classes)
    n = c.grid**2
    # per-sample mask ratio: cosine schedule, all masked with probability p_full_mask
    u = torch.rand(b, generator=generator, device=labels.device)
    ratio = torch.cos(u * math.pi / 2)
    full = torch.rand(b, generator=generator, device=labels.device) < p_full_mask
    ratio = torch.where(full, torch.ones_like(ratio), ratio)
    scores = torch.rand(b, n, generator=generator, device=labels.device)
    masked = scores < ratio[:, None]
    masked |= target_tokens.eq(IGNORE)
    inputs = torch.where(masked, torch.full_like(target_tokens, model.mask_token), target_tokens)
    token_logits, dense, edge = model(inputs, text, text_pad)
    # Inverse-sqrt-frequency class weights from the batch: mIoU averages over classes, so small things (a sheep, a
    # window) must not drown under sky and grass pixels.
    valid = labels.ne(IGNORE)
    freq = torch.bincount(labels[valid], minlength=c.num_classes).float()
    weight = torch.where(freq > 0, freq.clamp(min=1).rsqrt(), torch.zeros_like(freq))
    weight = weight / (weight[labels[valid]].mean() + 1e-8) if valid.any() else None
    dense_loss = F.cross_entropy(dense, labels, weight=weight, ignore_index=IGNORE)
    tok_target = torch.where(masked, target_tokens, torch.full_like(target_tokens, IGNORE))
    if tok_target.ne(IGNORE).any():
        tok_loss = F.cross_entropy(token_logits.reshape(-1, c.num_classes), tok_target.reshape(-1), ignore_index=IGNORE)
    else:
        tok_loss = token_logits.sum() * 0
    loss = dense_loss + token_weight * tok_loss
    metrics = {"dense_ce": float(dense_loss.detach()), "token_ce": float(tok_loss.detach())}
    if instances is not None:
        edge_target = instance_boundaries(instances)
        edge_loss = F.binary_cross_entropy_with_logits(edge, edge_target, pos_weight=torch.tensor(3.0, device=edge.device))
        loss = loss + edge_weight * edge_loss
        metrics["edge_bce"] = float(edge_loss.detach())
    with torch.no_grad():
        metrics["pixel_acc"] = float((dense.argmax(1).eq(labels) & valid).sum() / valid.sum().clamp(min=1))
    return loss, metrics

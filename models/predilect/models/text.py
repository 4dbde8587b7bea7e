"""Disease knowledge as text: a tokenizer trained on the catalog's descriptions and a small
transformer text encoder, both built here with no downloaded weights.

* ``build_tokenizer`` builds a WordPiece tokenizer (Hugging Face ``tokenizers``) from the
  catalog texts, deterministically, with an a-z/0-9 alphabet so that words it never saw (a
  held-out category's descriptions) still split into known pieces instead of ``[UNK]``;
  ``byte_tokenizer`` is the
  training-free alternative (one id per UTF-8 byte). Either serialises to one JSON string that
  travels with the checkpoint.
* ``TextEncoder`` is a pre-LayerNorm transformer whose parameter names follow open_clip's text
  tower (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N.{ln_1,attn,
  ln_2,mlp.c_fc,mlp.c_proj}``, ``ln_final``, ``text_projection``), so a LOCAL open_clip
  checkpoint loads into it by name (``predilect.models.pretrained.load_text_encoder``).
* ``CatalogTexts`` tokenises every description of every disease once, plus the built-in
  descriptions of a normal eye (``normal`` is the absence of disease, not a catalog entry), and
  turns encoder outputs into one L2-normalised embedding per class (the mean of its
  descriptions: a prompt ensemble as in CLIP and FLAIR).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predilect.catalog import NORMAL_LABEL, Catalog
from predilect.errors import ConfigError

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)  # PAD is id 0, as open_clip pads
NORMAL_DESCRIPTIONS = (
    "A healthy retina with no lesions: normal optic disc, vessels and macula.",
    "Normal fundus: no haemorrhages, exudates, drusen or pigment changes; sharp disc margins.",
    "Normal OCT: regular retinal layers of normal thickness with a preserved foveal pit.",
)
"""What the text encoder reads for an image without any catalog disease."""


# ----------------------------------------------------------------------------- tokenizers


def build_tokenizer(texts: Sequence[str], *, vocab_size: int = 2000):  # -> tokenizers.Tokenizer
    """A WordPiece tokenizer for ``texts`` (lower-cased, accents stripped), built deterministically.

    The ``tokenizers`` trainers break frequency ties in hash-map order, so the same texts can give
    different vocabularies run to run (and with them different model versions); the vocabulary is
    therefore ranked here and handed to ``tokenizers``' WordPiece model: the special tokens, every
    character seen plus a-z, 0-9 and ASCII punctuation (word-initial and ``##`` continuation forms, so nothing is ever
    ``[UNK]``), then whole words, word-initial prefixes and ``##`` suffixes (3+ characters) by
    frequency, ties broken alphabetically, up to ``vocab_size``. A word the texts never held (a
    held-out category's) splits into known stems and endings by greedy longest match.
    """
    from tokenizers import Tokenizer, models

    if not texts:
        raise ConfigError("a tokenizer needs at least one text to train on")
    probe = Tokenizer(models.WordPiece(vocab={UNK: 0}, unk_token=UNK))
    _configure(probe)
    assert probe.normalizer is not None and probe.pre_tokenizer is not None
    words: Counter[str] = Counter()
    for text in texts:
        normal = probe.normalizer.normalize_str(text)
        words.update(piece for piece, _ in probe.pre_tokenizer.pre_tokenize_str(normal))
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | {c for w in words for c in w})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("##" + c, len(vocab))
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        pieces[word] += count * 4  # whole words first
        for n in range(3, len(word)):
            pieces[word[:n]] += count
            pieces["##" + word[n:]] += count if len(word) - n >= 3 else 0
    for piece, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= max(vocab_size, len(SPECIAL_TOKENS) + 2 * len(chars)):
            break
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=64))
    _configure(tokenizer)
    _add_template(tokenizer)
    return tokenizer


def _configure(tokenizer) -> None:
    from tokenizers import decoders, normalizers, pre_tokenizers

    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()


def byte_tokenizer():  # -> tokenizers.Tokenizer
    """One id per UTF-8 byte (plus the special tokens): nothing to train, nothing unknown."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    _add_template(tokenizer)
    return tokenizer


def _add_template(tokenizer) -> None:
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))],
    )


def load_tokenizer(text: str):  # -> tokenizers.Tokenizer
    """A tokenizer from its JSON string (as stored in a checkpoint or a ``tokenizer.json`` file)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:
        raise ConfigError(f"not a tokenizers JSON: {e}") from e


def tokenize(tokenizer, texts: Sequence[str], context_length: int) -> Tensor:
    """Token ids ``(len(texts), context_length)``, truncated, right-padded with id 0."""
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        row = encoding.ids[:context_length]
        if len(encoding.ids) > context_length:
            row[-1] = encoding.ids[-1]  # keep the end token: "last" pooling reads it
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


# ----------------------------------------------------------------------------- encoder


@dataclass(frozen=True)
class TextCfg:
    """Text-encoder hyper-parameters; saved with every checkpoint that holds a text encoder.

    ``pool``: ``mean`` over non-padding tokens (the default, bidirectional encoder) or
    ``last`` (the last non-padding token, open_clip's end-of-text pooling, with ``causal``).
    """

    vocab_size: int = 2000
    context_length: int = 48
    width: int = 128
    layers: int = 2
    heads: int = 4
    embed_dim: int = 128
    mlp_ratio: float = 4.0
    pool: str = "mean"
    causal: bool = False
    act: str = "gelu"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "last"):
            raise ConfigError(f"text pool must be 'mean' or 'last', got {self.pool!r}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ConfigError(f"text act must be 'gelu' or 'quick_gelu', got {self.act!r}")
        if self.width % self.heads:
            raise ConfigError(f"text width {self.width} is not divisible by heads {self.heads}")
        for name in ("vocab_size", "context_length", "width", "layers", "embed_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"text {name} must be >= 1, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TextCfg:
        return cls(**json.loads(text))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP weights."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu: nn.Module = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    """Pre-LN transformer block (open_clip's ``ResidualAttentionBlock`` names)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _Mlp(width, int(width * mlp_ratio), act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, attn_mask: Tensor | None, padding: Tensor | None) -> Tensor:
        h = self.ln_1(x)
        h, _ = self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=padding, need_weights=False)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.ln_2(x)))


class _Transformer(nn.Module):
    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.dropout) for _ in range(cfg.layers)
        )

    def forward(self, x: Tensor, *, attn_mask: Tensor | None, padding: Tensor | None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask, padding=padding)
        return x


class TextEncoder(nn.Module):
    """Token ids ``(T, L)`` -> text embeddings ``(T, embed_dim)`` (not normalised)."""

    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.transformer = _Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.randn(cfg.width, cfg.embed_dim) * cfg.width**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.cfg.context_length}")
        valid = ids != 0
        valid[:, 0] = True  # an empty text still has one position to pool
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        causal = None
        if self.cfg.causal:
            n = ids.shape[1]
            causal = torch.full((n, n), float("-inf"), device=ids.device).triu(1)
        # Causal models (open_clip) attend to padding after the end token; it never reaches "last".
        x = self.transformer(x, attn_mask=causal, padding=None if self.cfg.causal else ~valid)
        x = self.ln_final(x)
        if self.cfg.pool == "last":
            last = valid.long().sum(dim=1) - 1
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        else:
            weights = valid.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return pooled @ self.text_projection


# ----------------------------------------------------------------------------- the catalog as text


@dataclass
class CatalogTexts:
    """Every description of every class, tokenised once.

    Classes are ``[normal, *catalog.ids]``: row 0 is the normal eye. ``ids`` is ``(T, L)`` for
    all descriptions, ``owner[t]`` the class of description ``t``.
    """

    class_ids: list[str]
    ids: Tensor
    owner: Tensor
    texts: list[str] = field(repr=False)

    @classmethod
    def build(cls, tokenizer, catalog: Catalog, context_length: int) -> CatalogTexts:
        texts: list[str] = []
        owner: list[int] = []
        for j, descriptions in enumerate([NORMAL_DESCRIPTIONS, *(d.descriptions for d in catalog)]):
            texts += list(descriptions)
            owner += [j] * len(descriptions)
        return cls(
            class_ids=[NORMAL_LABEL, *catalog.ids],
            ids=tokenize(tokenizer, texts, context_length),
            owner=torch.tensor(owner, dtype=torch.long),
            texts=texts,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Indices of one description per class, drawn at random (text augmentation in training;
        the global torch RNG by default, so a resumed run draws the same)."""
        picks = []
        for j in range(self.num_classes):
            rows = torch.nonzero(self.owner == j).flatten()
            picks.append(rows[torch.randint(len(rows), (1,), generator=generator)])
        return torch.cat(picks)

    def embed(self, encoder: nn.Module, *, rows: Tensor | None = None) -> Tensor:
        """L2-normalised class embeddings ``(num_classes, E)``: the mean of the class's
        (normalised) description embeddings over ``rows`` (default: all descriptions)."""
        device = next(encoder.parameters()).device
        rows = torch.arange(len(self.owner)) if rows is None else rows
        emb = F.normalize(encoder(self.ids[rows].to(device)), dim=-1)
        owner = self.owner[rows].to(device)
        summed = torch.zeros(self.num_classes, emb.shape[1], device=device, dtype=emb.dtype)
        summed = summed.index_add(0, owner, emb)
        return F.normalize(summed, dim=-1)


def catalog_corpus(catalog: Catalog) -> list[str]:
    """The texts a tokenizer for ``catalog`` is trained on: names, descriptions, normal-eye texts."""
    corpus = list(NORMAL_DESCRIPTIONS)
    for disease in catalog:
        corpus.append(disease.name)
        corpus += list(disease.descriptions)
    return corpus

"""The text side of UOPSL: tokenizer, text encoder, the catalog as class embeddings."""

import torch

from predilect.catalog import DEFAULT_CATALOG
from predilect.models.text import (
    CatalogTexts,
    TextCfg,
    TextEncoder,
    build_tokenizer,
    byte_tokenizer,
    catalog_corpus,
    load_tokenizer,
    tokenize,
)

HELD_OUT = ("crvo", "hypertensive")


def _trained():
    return DEFAULT_CATALOG.subset([d for d in DEFAULT_CATALOG.ids if d not in HELD_OUT])


def test_build_tokenizer_gives_identical_json_when_built_twice():
    corpus = catalog_corpus(_trained())
    assert build_tokenizer(corpus).to_str() == build_tokenizer(corpus).to_str()


def test_tokenizer_splits_unseen_words_without_unk_when_category_held_out():
    tokenizer = build_tokenizer(catalog_corpus(_trained()), vocab_size=800)
    for disease in HELD_OUT:
        for text in DEFAULT_CATALOG[disease].descriptions:
            assert "[UNK]" not in tokenizer.encode(text).tokens
    assert "[UNK]" not in tokenizer.encode("Zygomatic xylophones, 42 qualms!").tokens


def test_tokenizer_round_trips_when_serialised():
    tokenizer = build_tokenizer(catalog_corpus(DEFAULT_CATALOG), vocab_size=500)
    again = load_tokenizer(tokenizer.to_str())
    text = DEFAULT_CATALOG["dme"].descriptions[0]
    assert again.encode(text).ids == tokenizer.encode(text).ids


def test_byte_tokenizer_encodes_every_byte_when_text_is_not_ascii():
    tokens = byte_tokenizer().encode("oedème").tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == 2 + len("oedème".encode())


def test_tokenize_keeps_end_token_when_text_truncated():
    tokenizer = build_tokenizer(catalog_corpus(DEFAULT_CATALOG), vocab_size=500)
    ids = tokenize(tokenizer, [DEFAULT_CATALOG["dr"].descriptions[0], "fovea"], 6)
    assert ids.shape == (2, 6) and ids[0, -1].item() == tokenizer.token_to_id("[SEP]")
    assert ids[1, 3:].eq(0).all()  # [CLS] fovea [SEP] then padding


def test_text_encoder_ignores_padding_when_pooling_mean():
    torch.manual_seed(0)
    encoder = TextEncoder(TextCfg(vocab_size=50, context_length=12, width=16, heads=2, embed_dim=8, dropout=0.0))
    encoder.eval()
    short = torch.tensor([[2, 7, 9, 3]])
    padded = torch.tensor([[2, 7, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(encoder(short), encoder(padded))


def test_text_encoder_reads_end_token_when_causal_last_pooling():
    torch.manual_seed(0)
    cfg = TextCfg(
        vocab_size=50, context_length=8, width=16, heads=2, embed_dim=8, dropout=0.0, pool="last", causal=True
    )
    encoder = TextEncoder(cfg).eval()
    a = encoder(torch.tensor([[2, 7, 9, 3, 0, 0, 0, 0]]))
    b = encoder(torch.tensor([[2, 7, 9, 3, 0, 0, 0, 0]]).masked_fill(torch.arange(8) >= 4, 5))
    c = encoder(torch.tensor([[2, 7, 8, 3, 0, 0, 0, 0]]))
    assert not torch.allclose(a, c)  # content before the end token matters
    assert a.shape == b.shape == (1, 8)


def test_catalog_texts_embed_one_unit_vector_per_class_with_normal_first():
    catalog = _trained()
    tokenizer = build_tokenizer(catalog_corpus(catalog), vocab_size=800)
    texts = CatalogTexts.build(tokenizer, catalog, 48)
    encoder = TextEncoder(TextCfg(vocab_size=tokenizer.get_vocab_size(), width=32, heads=2, embed_dim=16))
    emb = texts.embed(encoder)
    assert texts.class_ids[0] == "normal" and texts.class_ids[1:] == catalog.ids
    assert emb.shape == (1 + len(catalog), 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    rows = texts.sample(torch.Generator().manual_seed(0))
    assert texts.owner[rows].tolist() == list(range(texts.num_classes))

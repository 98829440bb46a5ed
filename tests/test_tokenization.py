"""ID-token tokenizer: id layout, segment encoding, spacing, BOS, prompt/main split, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from cllm4rec.templates import (
    TEMPLATES,
    Item,
    Items,
    Text,
    User,
    biography_prompt,
    cap_items,
    interaction_prompt,
    item_content_prompt,
    recommendation_prompt,
    render,
    review_prompt,
)
from cllm4rec.tokenization import Document, IdTokenizer, truncate_main
from tokenizer_fixtures import KINDS, build_tokenizer  # pytest puts tests/ on sys.path (no __init__.py)

N_USERS, N_ITEMS = 7, 11
PAD = 37  # padded embedding rows beyond len(tokenizer)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def idtok(kind: str) -> IdTokenizer:
    tok = build_tokenizer(kind)
    return IdTokenizer(tok, vocab_rows=len(tok) + PAD, n_users=N_USERS, n_items=N_ITEMS)


def words(idtok: IdTokenizer, text: str) -> list[int]:
    return idtok.tokenizer(text, add_special_tokens=False)["input_ids"]


def bos(idtok: IdTokenizer) -> list[int]:
    return [] if idtok.bos_id is None else [idtok.bos_id]


def test_id_layout_uses_embedding_rows(idtok: IdTokenizer) -> None:
    v = idtok.vocab_rows
    assert v > len(idtok.tokenizer)
    assert idtok.user_token(0) == v and idtok.user_token(3) == v + 3
    assert idtok.item_token(0) == v + N_USERS and idtok.item_token(5) == v + N_USERS + 5
    assert idtok.total_size == v + N_USERS + N_ITEMS


def test_vectorised_predicates_and_indices(idtok: IdTokenizer) -> None:
    v = idtok.vocab_rows
    ids = torch.tensor([[0, v - 1, v, v + N_USERS - 1], [v + N_USERS, v + N_USERS + N_ITEMS - 1, 5, v + 2]])
    assert idtok.is_word(ids).tolist() == [[True, True, False, False], [False, False, True, False]]
    assert idtok.is_user(ids).tolist() == [[False, False, True, True], [False, False, False, True]]
    assert idtok.is_item(ids).tolist() == [[False, False, False, False], [True, True, False, False]]
    assert isinstance(idtok.is_user(ids), torch.Tensor)
    assert isinstance(idtok.is_item(ids.numpy()), np.ndarray)
    assert idtok.user_index(ids[ids >= v][:2]).tolist() == [0, N_USERS - 1]
    assert idtok.item_index(np.array([v + N_USERS + 4])).tolist() == [4]
    with pytest.raises(ValueError, match="not item tokens"):
        idtok.item_index([v])


def test_out_of_range_ids_raise_naming_the_index(idtok: IdTokenizer) -> None:
    with pytest.raises(IndexError, match=f"user index {N_USERS} out of range"):
        idtok.user_token(N_USERS)
    with pytest.raises(IndexError, match="item index -1 out of range"):
        idtok.encode_segments([[Item(-1)]])
    with pytest.raises(IndexError, match=f"item index {N_ITEMS + 4} out of range"):
        idtok.encode_segments([[Items([1, N_ITEMS + 4])]])
    with pytest.raises(IndexError, match="token id"):
        idtok.decode([idtok.total_size])


def test_vocab_rows_must_cover_tokenizer() -> None:
    tok = build_tokenizer("gpt2")
    with pytest.raises(ValueError, match="vocab_rows"):
        IdTokenizer(tok, vocab_rows=len(tok) - 1, n_users=1, n_items=1)


def test_bos_once_per_document(kind: str, idtok: IdTokenizer) -> None:
    expected_bos = None if kind == "gpt2" else idtok.tokenizer.convert_tokens_to_ids("<s>")
    assert idtok.bos_id == expected_bos
    for ids in idtok.encode_segments([interaction_prompt(1) + [Items([2, 3])], review_prompt(0, 1) + [Text("ok")]]):
        assert ids.count(expected_bos) == (0 if expected_bos is None else 1)
        assert (ids[0] == expected_bos) == (expected_bos is not None)


def test_bos_override() -> None:
    tok = build_tokenizer("llama")
    off = IdTokenizer(tok, vocab_rows=len(tok), n_users=2, n_items=2, add_bos=False)
    assert off.encode_segments([[User(1)]]) == [[len(tok) + 1]]
    gpt2 = build_tokenizer("gpt2")
    forced = IdTokenizer(gpt2, vocab_rows=len(gpt2), n_users=2, n_items=2, add_bos=True)
    assert forced.encode_segments([[User(1)]]) == [[gpt2.bos_token_id, len(gpt2) + 1]]
    no_bos = PreTrainedTokenizerFast(tokenizer_object=gpt2.backend_tokenizer)
    with pytest.raises(ValueError, match="no BOS"):
        IdTokenizer(no_bos, vocab_rows=len(no_bos), n_users=1, n_items=1, add_bos=True)


def in_context(idtok: IdTokenizer, text: str) -> list[int]:
    """Tokens of ``text`` as it tokenises inside running text, right after the word "a"."""
    return words(idtok, "a" + text)[len(words(idtok, "a")) :]


def test_text_after_id_tokenises_as_a_new_word(idtok: IdTokenizer) -> None:
    (ids,) = idtok.encode_segments([interaction_prompt(3)])
    assert ids == bos(idtok) + [idtok.user_token(3)] + in_context(idtok, " has interacted with")
    # text at the start of a document gets no extra space
    (ids,) = idtok.encode_segments([[Text("The content of"), Item(2), Text("is")]])
    assert ids == bos(idtok) + words(idtok, "The content of") + [idtok.item_token(2)] + in_context(idtok, " is")


def test_punctuation_attaches_to_an_id(kind: str, idtok: IdTokenizer) -> None:
    (ids,) = idtok.encode_segments([[Item(2), Text(":"), User(1), Text(", ok")]])
    expected = [idtok.item_token(2)] + in_context(idtok, ":") + [idtok.user_token(1)] + in_context(idtok, ", ok")
    assert ids == bos(idtok) + expected
    assert idtok.stray_marker_id == (None if kind == "gpt2" else idtok.tokenizer.convert_tokens_to_ids("▁"))
    assert idtok.word_prefix == (" " if kind == "gpt2" else "")


def test_id_like_text_stays_words(idtok: IdTokenizer) -> None:
    doc = idtok.encode_document(review_prompt(1, 2), [Text("better than <item_5> and <user_3>")])
    main = np.array(doc.main_ids)
    assert idtok.is_word(main).all()
    assert not idtok.is_item(main).any() and not idtok.is_user(main).any()
    assert idtok.is_item(np.array(doc.prompt_ids)).sum() == 1


def test_round_trip_decode(idtok: IdTokenizer) -> None:
    docs = [
        interaction_prompt(3) + [Items([1, 2, 10])],
        recommendation_prompt(4, [0, 5]),
        biography_prompt(6) + [Text("a retired teacher who loves old films.")],
        item_content_prompt(9) + [Text("a comedy about cats and dogs")],
        review_prompt(0, 1) + [Text("great movie, loved it!")],
    ]
    for segments, ids in zip(docs, idtok.encode_segments(docs)):
        assert idtok.decode(ids) == render(segments)
        assert idtok.decode(torch.tensor(ids)) == render(segments)
    assert render(docs[0]) == "<user_3> has interacted with <item_1> <item_2> <item_10>"
    assert render(docs[1]) == "<user_4> has interacted with <item_0> <item_5>, <user_4> will interact with"


def test_batch_equals_per_document(idtok: IdTokenizer) -> None:
    pairs = [
        (interaction_prompt(2), [Items(np.array([4, 1, 7]))]),
        (biography_prompt(1), [Text("a retired teacher")]),
        (review_prompt(5, 3), [Text("")]),
        (recommendation_prompt(0, []), []),
    ]
    batch = idtok.encode_documents(pairs)
    assert batch == [idtok.encode_document(p, m) for p, m in pairs]
    assert idtok.encode_segments([p + m for p, m in pairs]) == [d.ids for d in batch]


def test_prompt_main_split(idtok: IdTokenizer) -> None:
    doc = idtok.encode_document(interaction_prompt(2), [Items([4, 1, 7])])
    ids, n_prompt = doc
    assert n_prompt == len(bos(idtok)) + 1 + len(in_context(idtok, " has interacted with"))
    assert doc.main_ids == [idtok.item_token(j) for j in (4, 1, 7)]
    assert doc.prompt_ids + doc.main_ids == ids
    content = idtok.encode_document(biography_prompt(1), [Text("a retired teacher who loves old films.")])
    assert idtok.decode(content.main_ids).strip() == "a retired teacher who loves old films."
    assert idtok.is_word(np.array(content.main_ids)).all()


def test_main_part_cap(idtok: IdTokenizer) -> None:
    long_text = [Text("great movie, loved it! " * 50)]
    full = idtok.encode_document(review_prompt(0, 1), long_text)
    capped = idtok.encode_document(review_prompt(0, 1), long_text, max_main_tokens=16)
    assert len(full.main_ids) > 128
    assert capped.n_prompt == full.n_prompt and capped.main_ids == full.main_ids[:16]
    assert len(truncate_main(full).main_ids) == 128
    assert idtok.encode_documents([(review_prompt(0, 1), long_text)], max_main_tokens=16) == [capped]
    assert truncate_main(Document([1, 2, 3], 2), 5) == Document([1, 2, 3], 2)


def test_cap_items() -> None:
    items = list(range(10))
    assert cap_items(items, 20) == items
    assert cap_items(items, 3) == [7, 8, 9]
    a = cap_items(items, 4, np.random.default_rng(0))
    assert a == cap_items(items, 4, np.random.default_rng(0))
    assert len(a) == 4 and a == sorted(a) and set(a) <= set(items)


def test_templates_render_as_documented() -> None:
    assert render(interaction_prompt(3)) == TEMPLATES["interaction"].format(user=3)
    assert render(biography_prompt(3)) == TEMPLATES["biography"].format(user=3)
    assert render(item_content_prompt(8)) == TEMPLATES["item_content"].format(item=8)
    assert render(review_prompt(3, 8)) == TEMPLATES["review"].format(user=3, item=8)
    assert render(recommendation_prompt(3, [1, 2])) == TEMPLATES["recommendation"].format(
        user=3, items="<item_1> <item_2>"
    )


def test_million_items_cost_nothing(kind: str) -> None:
    tok = build_tokenizer(kind)
    size = len(tok)
    big = IdTokenizer(tok, vocab_rows=size, n_users=3, n_items=1_000_000)
    items = np.arange(999_990, 1_000_000)
    doc = big.encode_document(interaction_prompt(2), [Items(items)])
    assert doc.main_ids == (size + 3 + items).tolist()
    assert big.decode(doc.main_ids[-1:]) == "<item_999999>"
    assert len(tok) == size

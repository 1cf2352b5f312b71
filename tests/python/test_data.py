"""Training data: Megatron indexed datasets (written by us and byte by byte), the loader's
windows, order and resume, the byte tokenizer, and `mambatron data prepare|info`."""
import json
import struct
import sys

import numpy as np
import pytest

import mambatron as mt
from mambatron.cli import main
from mambatron.data import DataLoader, IndexedDataset, IndexedDatasetWriter
from mambatron.tokenizers import ByteTokenizer, load_tokenizer


def _idx_bytes(code, lengths, doc_index, itemsize, version=1, magic=b"MMIDIDX\x00\x00"):
    """An .idx built from the layout in ECOSYSTEM.md, field by field."""
    out = magic + struct.pack("<Q", version) + struct.pack("<B", code)
    out += struct.pack("<QQ", len(lengths), len(doc_index))
    out += struct.pack(f"<{len(lengths)}i", *lengths)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64) * itemsize)[:-1]]) if lengths else []
    out += struct.pack(f"<{len(lengths)}q", *[int(o) for o in offsets])
    out += struct.pack(f"<{len(doc_index)}q", *doc_index)
    return out


def _random_docs(rng, n, vocab, max_len=30):
    return [rng.integers(1, vocab, size=int(rng.integers(1, max_len))) for _ in range(n)]


def _write(prefix, docs, code=8):
    with IndexedDatasetWriter(str(prefix), code) as w:
        for d in docs:
            w.add_document(d)
    return IndexedDataset(str(prefix))


@pytest.mark.parametrize("vocab", [256, 65499, 65500, 200000])
def test_round_trip_picks_megatron_dtype(tmp_path, rng, vocab):
    code = mt.data.token_code_for_vocab(vocab)
    assert code == (8 if vocab < 65500 else 4)
    docs = _random_docs(rng, 17, vocab)
    ds = _write(tmp_path / "d", docs, code)
    assert (ds.num_sequences, ds.num_documents, len(ds)) == (17, 17, 17)
    assert ds.dtype == ("uint16" if code == 8 else "int32")
    assert ds.num_tokens == sum(len(d) for d in docs)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
        np.testing.assert_array_equal(ds.read(i), d)
        assert ds[i].dtype == (np.uint16 if code == 8 else np.int32)
    np.testing.assert_array_equal(ds.document_index(), np.arange(18))
    assert (tmp_path / "d.bin").stat().st_size == ds.num_tokens * (2 if code == 8 else 4)


def test_sequences_within_documents(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "d"), 4) as w:
        w.add_sequence([1, 2])
        w.add_sequence(np.array([3], dtype=np.int8))
        w.end_document()
        w.add_sequence([4, 5, 6])
    ds = IndexedDataset(str(tmp_path / "d"))
    assert ds.num_sequences == 3 and ds.num_documents == 2
    np.testing.assert_array_equal(ds.document_index(), [0, 2, 3])
    np.testing.assert_array_equal(ds.token_offsets(), [0, 2, 3, 6])
    np.testing.assert_array_equal(ds.get(2, 1, 2), [5, 6])


@pytest.mark.parametrize("code,np_dtype", [(8, np.uint16), (4, np.int32)])
def test_hand_built_files_are_read_right(tmp_path, code, np_dtype):
    tokens = [[7, 65535 if code == 8 else 2**31 - 1, 0], [], [1, 2]]
    flat = np.array([t for seq in tokens for t in seq], dtype=np_dtype)
    prefix = tmp_path / "hand"
    (tmp_path / "hand.idx").write_bytes(_idx_bytes(code, [3, 0, 2], [0, 2, 3], flat.itemsize))
    (tmp_path / "hand.bin").write_bytes(flat.tobytes())
    ds = IndexedDataset(str(prefix))
    assert ds.num_documents == 2 and ds.num_sequences == 3 and ds.num_tokens == 5
    assert ds.dtype_code == code
    for i, seq in enumerate(tokens):
        np.testing.assert_array_equal(ds[i], seq)
        assert ds[i].dtype == np_dtype
    assert not ds[0].flags.writeable
    with pytest.raises(ValueError):
        ds[0][0] = 1
    assert ds.document_start(1) == 2


def test_our_idx_matches_the_hand_built_layout(tmp_path):
    _write(tmp_path / "d", [[5, 6, 7], [8]], 8)
    assert (tmp_path / "d.idx").read_bytes() == _idx_bytes(8, [3, 1], [0, 1, 2], 2)
    assert (tmp_path / "d.bin").read_bytes() == np.array([5, 6, 7, 8], dtype="<u2").tobytes()


_GOOD = _idx_bytes(8, [2, 3], [0, 1, 2], 2)
_BIN = np.arange(1, 6, dtype="<u2").tobytes()
_CORRUPT = {
    "truncated idx": (_GOOD[:20], _BIN, "truncated", ".idx"),
    "bad magic": (b"XXIDIDX\x00\x00" + _GOOD[9:], _BIN, "bad magic", ".idx"),
    "bad version": (_idx_bytes(8, [2, 3], [0, 1, 2], 2, version=3), _BIN, "version 3", ".idx"),
    "unknown dtype code": (_GOOD[:17] + b"\x0c" + _GOOD[18:], _BIN, "dtype code 12", ".idx"),
    "counts vs size": (_GOOD[:-8], _BIN, "sequence_count 2", ".idx"),
    "offsets vs lengths": (_GOOD[:34 + 8 + 8] + struct.pack("<q", 6) + _GOOD[34 + 16 + 8:], _BIN,
                           "byte offset 6", ".idx"),
    "bin too short": (_GOOD, _BIN[:-2], "shorter than the 10 bytes", ".bin"),
    "bin too long": (_GOOD, _BIN + b"\x00\x00", "longer than the 10 bytes", ".bin"),
}


@pytest.mark.parametrize("case", sorted(_CORRUPT))
def test_corrupt_files_are_clear_errors(tmp_path, case):
    idx, bin_, words, which = _CORRUPT[case]
    (tmp_path / "c.idx").write_bytes(idx)
    (tmp_path / "c.bin").write_bytes(bin_)
    with pytest.raises(ValueError) as e:
        IndexedDataset(str(tmp_path / "c"))
    assert words in str(e.value) and str(tmp_path / "c") + which in str(e.value)


def test_writer_rejects_tokens_outside_the_dtype_and_aborts_cleanly(tmp_path):
    with pytest.raises(ValueError, match="token 70000"):
        with IndexedDatasetWriter(str(tmp_path / "d"), 8) as w:
            w.add_document([1, 2])
            w.add_document([70000])
    assert not list(tmp_path.iterdir())  # no .bin, .idx or temporaries left


def _reference_samples(docs, seq_len, eod):
    """Every window the loader should produce, from the plain concatenation."""
    stream, doc_of = [], []
    for n, d in enumerate(docs):
        seq = list(d) + [eod]
        stream += seq
        doc_of += [n] * len(seq)
    stream, doc_of = np.array(stream), np.array(doc_of)
    count = (len(stream) - 1) // seq_len
    return [(stream[k * seq_len:k * seq_len + seq_len + 1],
             doc_of[k * seq_len:k * seq_len + seq_len + 1] - doc_of[k * seq_len]) for k in range(count)]


@pytest.mark.parametrize("seq_len", [1, 5, 64])
def test_loader_windows_cross_documents_with_seq_idx(tmp_path, rng, seq_len):
    docs = _random_docs(rng, 40, 256, max_len=20)
    ds = _write(tmp_path / "d", docs)
    loader = DataLoader(ds, seq_len, eod_id=0, shuffle=False)
    want = _reference_samples(docs, seq_len, 0)
    assert loader.num_samples == len(want) == len(loader)
    for k, (tokens, seq_idx) in enumerate(want):
        got_t, got_s = loader.sample(k)
        np.testing.assert_array_equal(got_t, tokens)
        np.testing.assert_array_equal(got_s, seq_idx)
    tokens, seq_idx = loader.next_batch(3)
    assert tokens.dtype == mt.int32 and seq_idx.dtype == mt.int32
    assert list(tokens.shape) == [3, seq_len + 1]
    np.testing.assert_array_equal(tokens.numpy(), np.stack([w[0] for w in want[:3]]))
    np.testing.assert_array_equal(seq_idx.numpy(), np.stack([w[1] for w in want[:3]]))
    assert seq_idx.numpy()[:, 0].max() == 0 and (np.diff(seq_idx.numpy(), axis=1) >= 0).all()


def test_documents_that_already_end_with_eod(tmp_path, rng):
    docs = [np.append(d, 0) for d in _random_docs(rng, 10, 256)]
    ds = _write(tmp_path / "d", docs)
    with_eod = DataLoader(ds, 4, append_eod=False, shuffle=False)
    want = _reference_samples([d[:-1] for d in docs], 4, 0)  # the same stream
    for k, (tokens, seq_idx) in enumerate(want):
        np.testing.assert_array_equal(with_eod.sample(k)[0], tokens)
        np.testing.assert_array_equal(with_eod.sample(k)[1], seq_idx)


def _order(loader, n):
    return np.concatenate([loader.next_batch(1)[0].numpy() for _ in range(n)])


def test_same_seed_same_order_other_seed_other_order(tmp_path, rng):
    ds = _write(tmp_path / "d", _random_docs(rng, 60, 256))
    a, b, c = (DataLoader(ds, 8, seed=s) for s in (5, 5, 6))
    n = a.num_samples
    first_epoch = [a.sample_at(0, i) for i in range(n)]
    assert sorted(first_epoch) == list(range(n)) and first_epoch != list(range(n))
    assert [a.sample_at(1, i) for i in range(n)] != first_epoch
    oa, ob, oc = _order(a, n + 3), _order(b, n + 3), _order(c, n + 3)
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)
    assert a.state_dict() == {"epoch": 1, "index": 3}


def test_state_restores_exactly(tmp_path, rng):
    ds = _write(tmp_path / "d", _random_docs(rng, 30, 256))
    a = DataLoader(ds, 6, seed=11, int64_tokens=True)
    for _ in range(5):
        a.next_batch(7)
    state = json.loads(json.dumps(a.state_dict()))  # survives a trainer_state.json
    want = [a.next_batch(7) for _ in range(6)]
    b = DataLoader(str(tmp_path / "d"), 6, seed=11, int64_tokens=True)
    b.load_state_dict(state)
    for tokens, seq_idx in want:
        got_tokens, got_seq_idx = b.next_batch(7)
        assert got_tokens.dtype == mt.int64
        np.testing.assert_array_equal(got_tokens.numpy(), tokens.numpy())
        np.testing.assert_array_equal(got_seq_idx.numpy(), seq_idx.numpy())
    with pytest.raises(ValueError, match="out of range"):
        b.load_state_dict({"epoch": 0, "index": b.num_samples})


def test_eval_split_holds_out_the_last_documents(tmp_path, rng):
    docs = _random_docs(rng, 20, 256)
    ds = _write(tmp_path / "d", docs)
    train = DataLoader(ds, 4, split="train", eval_fraction=0.1, shuffle=False)
    held = DataLoader(ds, 4, split="eval", eval_fraction=0.1, shuffle=False)
    assert (train.num_documents, held.num_documents) == (18, 2)
    for k, (tokens, _) in enumerate(_reference_samples(docs[18:], 4, 0)):
        np.testing.assert_array_equal(held.sample(k)[0], tokens)
    with pytest.raises(ValueError, match="split 'test'"):
        DataLoader(ds, 4, split="test")
    with pytest.raises(ValueError, match="fewer than one sample"):
        DataLoader(ds, 10**6)


def test_byte_tokenizer():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 256 and tok.eod_id == 0
    text = "héllo\x00 wörld ✓"
    ids = list(tok.encode(text))
    assert 0 not in ids and ids == list("héllo wörld ✓".encode())
    assert tok.decode(ids + [0] + ids) == "héllo wörld ✓" * 2
    assert tok.decode(ids + [0], skip_special=False) == "héllo wörld ✓<|eod|>"
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        tok.decode([300])


def test_optional_tokenizers_name_their_package(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "sp.model").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="'tokenizers' package"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ImportError, match="'sentencepiece' package"):
        load_tokenizer(str(tmp_path / "sp.model"))
    with pytest.raises(ValueError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_hf_tokenizer_when_installed(tmp_path):
    tk = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tk.Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1, "b": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    t = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert t.eod_id == 0 and t.vocab_size == 4 and list(t.encode("a b c")) == [1, 2, 3]


def _corpus(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second document\n\nstill the second")
    (folder / "a.txt").write_text("first document ✓")
    (folder / "sub" / "c.md").write_text("third")
    (folder / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: ignored in folders
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"text": "json one", "id": 1}) + "\n\n" + json.dumps({"text": "json two"}) + "\n")
    return folder, jsonl


def test_cli_prepare_and_info(tmp_path, capsys):
    folder, jsonl = _corpus(tmp_path)
    out = tmp_path / "out" / "corpus"
    assert main(["data", "prepare", str(folder), str(jsonl), "--output", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "5 documents from 4 files" in summary and "uint16" in summary
    ds = IndexedDataset(str(out))
    texts = ["first document ✓", "second document\n\nstill the second", "third", "json one", "json two"]
    assert ds.num_documents == 5
    for i, t in enumerate(texts):
        assert ByteTokenizer().decode(ds[i]) == t
    assert main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "5 documents" in info and f"{sum(len(t.encode()) for t in texts):,} tokens" in info
    assert "first document ✓" in info
    assert main(["data", "info", str(out), "--json", "--tokens", "5"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sample_text"] == "first" and res["documents"] == 5 and res["dtype"] == "uint16"


def test_cli_prepare_append_eod_and_json(tmp_path, capsys):
    _, jsonl = _corpus(tmp_path)
    out = tmp_path / "eod"
    assert main(["data", "prepare", str(jsonl), "-o", str(out), "--append-eod", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["documents"] == 2 and res["tokens"] == len("json one") + len("json two") + 2
    ds = IndexedDataset(str(out))
    assert ds[0][-1] == 0 and ds[1][-1] == 0
    loader = DataLoader(ds, 4, append_eod=False, shuffle=False)
    assert loader.num_stream_tokens == res["tokens"]


def test_cli_errors_are_messages(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    assert main(["data", "prepare", str(bad), "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "'text'" in err
    assert not (tmp_path / "x.bin").exists()
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "nothing.idx" in capsys.readouterr().err
    assert main(["data", "prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "y")]) == 2
    assert main(["data"]) == 2

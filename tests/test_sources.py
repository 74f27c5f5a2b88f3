"""Every corpus ships with the package, is checked, and has one loader per source.

For each corpus loader (WikiText, UD English EWT, Multi30k): the bundled copy is found
offline; the online source is chosen when asked (the network is faked at its boundary:
a loopback HTTP server, or ``datasets.load_dataset`` behind a Hub that answers); a
damaged bundled file is one line naming the file. Nothing reads a ``shared/`` folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from twotower.experiments import bilingual
from twotower.data import ud as pos
from twotower.data import sources
from twotower.data.corpus import load_corpus
from twotower.errors import TwotowerError

ROOT = Path(__file__).resolve().parents[1]


def load_wikitext(source):
    return load_corpus("wikitext-2", source).articles


def load_ewt(source):
    return pos.load_ud(pos.ud_english_ewt_paths(splits=("dev",), source=source))


def load_captions(source):
    return bilingual.load_multi30k(("en", "de", "fr"), "validation", source)


LOADERS = {"wikitext-2": (load_wikitext, "valid.txt.xz"),
           "ud-english-ewt": (load_ewt, "en_ewt-ud-dev.conllu.xz"),
           "multi30k": (load_captions, "val.de.xz")}


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Each test checks the files again (the module remembers files it found whole)."""
    monkeypatch.setattr(sources, "_whole", set())


# --- bundled --------------------------------------------------------------------------

def test_every_bundled_file_has_a_checksum_a_license_and_is_whole():
    for name in sources.CORPORA:
        folder = sources.data_dir() / name
        assert sorted(p.name for p in folder.glob("*.xz")) == \
            sorted(sources.checksums(name)), f"{name}: SHA256SUMS and files differ"
        assert (folder / "LICENSE.md").is_file()
    sources.check()  # raises on any mismatch


def test_bundled_corpora_load_offline_with_their_documented_sizes(no_network):
    assert len(load_corpus("wikitext-2", "auto").articles) == 120
    dev, test = pos.ud_english_ewt_paths()
    assert dev.parent == sources.data_dir() / "ud-english-ewt"
    sentences = pos.load_ud([dev, test])
    assert len(sentences) == 4078
    assert all((s.heads == 0).sum() == 1 for s in sentences)
    sizes = {split: {lang: len(text) for lang, text in bilingual.load_multi30k(
        ("en", "de", "fr"), split).items()}
        for split in ("train", "validation", "test")}
    assert sizes == {"train": dict.fromkeys(("en", "de", "fr"), 29_000),
                     "validation": dict.fromkeys(("en", "de", "fr"), 1_014),
                     "test": dict.fromkeys(("en", "de", "fr"), 1_000)}


def test_ud_bundled_files_are_the_official_release_byte_for_byte():
    entry = sources.CORPORA["ud-english-ewt"]
    for name, (url, sha256) in entry.release.items():
        data = lzma.decompress(sources.bundled_file("ud-english-ewt", name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == sha256
        assert "/r2.16/" in url and url.endswith(name.removesuffix(".xz"))


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the bundled data that a test may damage; the package reads it."""
    copy = tmp_path / "_data"
    shutil.copytree(sources.data_dir(), copy)
    monkeypatch.setattr(sources, "data_dir", lambda: copy)
    return copy


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("corpus", list(LOADERS))
def test_a_damaged_bundled_file_is_one_line_naming_it(package_copy, corpus, damage):
    load, name = LOADERS[corpus]
    path = package_copy / corpus / name
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(TwotowerError) as error:
        load("bundled")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert ("damaged" if damage != "delete" else "missing") in message
    assert "reinstall" in message


def test_notebook_setup_stops_on_damaged_data_before_anything_else(package_copy):
    from twotower.book.setup import setup

    (package_copy / "ud-english-ewt" / "en_ewt-ud-test.conllu.xz").write_bytes(b"x")
    setup("smoke", 0, "cpu", quiet=True)  # this chapter needs no treebank
    with pytest.raises(TwotowerError, match="en_ewt-ud-test.conllu.xz is damaged"):
        setup("smoke", 0, "cpu", data=("ud-english-ewt",), quiet=True)


def test_notebook_setup_resolves_auto_preset_from_the_device():
    import torch

    from twotower.book.setup import choose_preset

    assert choose_preset("auto", torch.device("cpu")) == "small"
    assert choose_preset("auto", torch.device("cuda")) == "colab"
    assert choose_preset("smoke", torch.device("cuda")) == "smoke"
    with pytest.raises(TwotowerError, match="unknown preset"):
        choose_preset("tiny", torch.device("cpu"))


# --- online ---------------------------------------------------------------------------

@pytest.fixture
def ud_release(loopback, monkeypatch):
    """UD's release served from loopback: the registry's URL points there."""
    entry = sources.CORPORA["ud-english-ewt"]
    release = {}
    for name, (url, sha256) in entry.release.items():
        path = "/r2.16/" + url.rsplit("/", 1)[-1]
        data = lzma.decompress(sources.bundled_file("ud-english-ewt", name).read_bytes())
        loopback.files[path] = data
        release[name] = (loopback.url + path, sha256)
    monkeypatch.setitem(sources.CORPORA, "ud-english-ewt",
                        dataclasses.replace(entry, release=release))
    return loopback


def test_ud_online_source_downloads_the_release_once_and_checks_it(ud_release,
                                                                    tmp_path):
    paths = pos.ud_english_ewt_paths(source="online", cache_dir=tmp_path)
    assert [p.name for p in paths] == ["en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu"]
    assert all(tmp_path in p.parents for p in paths)
    assert len(ud_release.requests) == 2
    online = pos.load_ud(paths)
    bundled = pos.load_ud(pos.ud_english_ewt_paths(source="bundled"))
    assert [s.words for s in online] == [s.words for s in bundled]
    pos.ud_english_ewt_paths(source="online", cache_dir=tmp_path)
    assert len(ud_release.requests) == 2  # the cached copies are used


def test_ud_online_download_that_differs_is_refused_and_not_kept(ud_release, tmp_path):
    ud_release.files["/r2.16/en_ewt-ud-dev.conllu"] += b"# an edit\n"
    with pytest.raises(TwotowerError, match="does not match its known hash") as error:
        pos.ud_english_ewt_paths(splits=("dev",), source="online", cache_dir=tmp_path)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.rglob("*.conllu"))


def test_ud_online_without_an_answer_is_one_line(ud_release, tmp_path):
    ud_release.close()
    with pytest.raises(TwotowerError, match="could not download .* source='bundled'"):
        pos.ud_english_ewt_paths(splits=("dev",), source="online", cache_dir=tmp_path)


def test_multi30k_online_reads_english_and_german_from_the_hub(hub_datasets):
    hub = {"en": ["A dog runs."] * 1014, "de": ["Ein Hund rennt."] * 1014}
    calls = hub_datasets({bilingual.HUB_NAME: hub})
    text = bilingual.load_multi30k(("en", "de", "fr"), "validation", source="online")
    assert calls == [(bilingual.HUB_NAME, None)]
    assert text["en"][0] == "A dog runs." and text["de"][0] == "Ein Hund rennt."
    assert text["fr"] == bilingual.load_multi30k(("fr",), "validation")["fr"]


def test_multi30k_auto_reads_the_bundled_copy_even_online(hub_datasets):
    calls = hub_datasets({bilingual.HUB_NAME: {}})
    assert len(bilingual.load_multi30k(("en",), "test")["en"]) == 1000
    assert calls == []


def test_multi30k_online_while_the_hub_is_down_is_one_line(no_network):
    with pytest.raises(TwotowerError, match="does not answer.*source='bundled'"):
        bilingual.load_multi30k(("en",), "validation", source="online")


def test_wikitext_auto_reads_the_bundled_copy_even_online(hub_datasets):
    calls = hub_datasets({"Salesforce/wikitext": {}})
    assert load_corpus("wikitext-2", "auto").source == "bundled"
    assert calls == []


def test_wikitext_103_falls_back_to_the_bundled_corpus_and_says_so(no_network,
                                                                    caplog):
    with caplog.at_level("WARNING"):
        corpus = load_corpus("wikitext-103", "auto")
    assert (corpus.name, corpus.source) == ("wikitext-2", "bundled")
    assert re.search(r"wikitext-103 needs the Hugging Face Hub.*differ", caplog.text)


def test_hub_is_the_legacy_name_of_online_and_unknown_sources_are_refused():
    assert sources.parse_source("hub") == "online"
    for load in (load_wikitext, load_ewt, load_captions):
        with pytest.raises(TwotowerError, match="unknown source 'ftp'"):
            load("ftp")


# --- a fresh clone --------------------------------------------------------------------

# the project's own folder of corpora, which no reader's clone has beside it; the
# patterns are assembled from its name so that this test does not find itself
FOLDER = "shared"
LOOKS_FOR_SHARED = re.compile("|".join([FOLDER + "/data", r"\.\./" + FOLDER,
                                        FOLDER + r"\" / \"data"]))


def test_nothing_in_the_package_tests_or_docs_looks_for_a_shared_folder():
    places = [ROOT / "twotower", ROOT / "tests", ROOT / "book", ROOT / "README.md",
              ROOT / "Makefile", ROOT / "tasks.py", ROOT / ".ci" / "run",
              ROOT / "_config.yml"]
    found = []
    for place in places:
        files = [place] if place.is_file() else [
            p for p in place.rglob("*") if p.is_file() and p.suffix in
            (".py", ".md", ".ipynb", ".yml", ".txt", "")]
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [f"{path.relative_to(ROOT)}: {m.group(0)}"
                      for m in LOOKS_FOR_SHARED.finditer(text)]
    assert found == []


def test_bundled_loaders_agree_with_the_shipped_text():
    # the xz copies hold the release text unchanged: spot-check one line of each
    captions = bilingual.load_multi30k(("fr",), "validation")["fr"]
    assert captions[0] == "Un groupe d'hommes chargent du coton dans un camion"
    first = pos.load_ud(pos.ud_english_ewt_paths(splits=("dev",)))[0]
    assert first.words == ["From", "the", "AP", "comes", "this", "story", ":"]
    assert np.array_equal(first.heads, [3, 3, 4, 0, 6, 4, 4])


def test_data_command_lists_and_checks_the_bundled_corpora(package_copy, capsys):
    from twotower.cli import main

    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for name, corpus in sources.CORPORA.items():
        assert f"{name}: {corpus.title}" in out and corpus.license in out
    (package_copy / "wikitext-2" / "test.txt.xz").write_bytes(b"")
    assert main(["data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bundled file") and len(err.splitlines()) == 1

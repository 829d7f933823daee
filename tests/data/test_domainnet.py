"""DomainNet on a tiny synthetic copy of the official layout: file lists, domain order, archives, errors, tasks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastpnr.data import DATASETS, load_dataset
from fastpnr.data.decode import decode_image
from fastpnr.errors import ConfigError, DataError
from fastpnr.data.scenarios import describe_tasks, make_tasks, task_test_indices
from tests.data.utils import DOMAINNET_CLASSES, domainnet_files, write_domainnet

ANCHORS_ORDER = ["real", "quickdraw", "painting", "sketch", "infograph", "clipart"]  # anchors §3.2, base.py


def test_registry_holds_345_classes_in_the_anchors_domain_order():
    spec = DATASETS["domainnet"]
    assert spec.num_classes == 345 and list(spec.domains) == ANCHORS_ORDER and spec.splits == ("train", "test")


def test_folder_layout_labels_from_the_lists_domain_from_the_path(tmp_path):
    files = write_domainnet(tmp_path / "domainnet")
    ds = load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")  # data root holding domainnet/
    rows = [row for d in ANCHORS_ORDER for row in files["train"][d]]
    assert ds.domains == ANCHORS_ORDER and len(ds) == len(rows) == 6 * 3 * 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [label for _, label, _ in rows]
    assert ds.domain_ids.tolist() == [ANCHORS_ORDER.index(rel.split("/")[0]) for rel, _, _ in rows]
    assert [m.split("domainnet/", 1)[1] for m in ds.members] == [rel for rel, _, _ in rows]  # list order
    assert len(ds.classes) == 345 and all(ds.classes[label] == name for name, label in DOMAINNET_CLASSES.items())
    assert ds.classes[1] == "label_1"  # a label no line uses
    assert ds.images.shape == (54, 8, 8, 3) and np.array_equal(ds.images[5], decode_image(rows[5][2]))
    test = load_dataset("domainnet", "test", tmp_path / "domainnet", cache_dir=tmp_path / "cache")  # the root itself
    assert len(test) == 6 * 3 and test.domains == ANCHORS_ORDER and not set(test.members) & set(ds.members)


def test_zip_and_tar_domains_read_like_folders_and_cache(tmp_path):
    write_domainnet(tmp_path / "folders")
    write_domainnet(tmp_path / "archives", archives={"real": "zip", "quickdraw": "tar", "sketch": "tar.xz"})
    folders = load_dataset("domainnet", "train", tmp_path / "folders", cache_dir=tmp_path / "cache")
    archives = load_dataset("domainnet", "train", tmp_path / "archives", cache_dir=tmp_path / "cache")
    for key in ("images", "labels", "domain_ids"):
        assert np.array_equal(getattr(folders, key), getattr(archives, key)), key
    assert archives.members[0] == f"{tmp_path / 'archives' / 'real.zip'}::real/zigzag/real_344_train00.jpg"
    assert archives.members[9].startswith(f"{tmp_path / 'archives' / 'quickdraw.tar'}::quickdraw/")
    hit = load_dataset("domainnet", "train", tmp_path / "archives", cache_dir=tmp_path / "cache")
    assert hit.from_cache and hit.domains == ANCHORS_ORDER and np.array_equal(hit.domain_ids, archives.domain_ids)
    raw = load_dataset("domainnet", "train", tmp_path / "archives", decode=False)
    assert raw.images is None and np.array_equal(raw.image(30), folders.images[30])


def test_domain_tasks_follow_the_anchors_order(tmp_path):
    write_domainnet(tmp_path)
    train = load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")
    test = load_dataset("domainnet", "test", tmp_path, cache_dir=tmp_path / "cache")
    tasks = make_tasks("domain", train, 6, seed=0)
    assert [t.domains for t in tasks] == [[d] for d in ANCHORS_ORDER]
    assert np.array_equal(np.sort(np.concatenate([t.train_indices for t in tasks])), np.arange(len(train)))
    for t, part in zip(tasks, task_test_indices("domain", tasks, test)):
        assert len(t.train_indices) == 9 and len(part) == 3
        assert all(f"/{t.domains[0]}/" in train.members[i] for i in t.train_indices)
        assert (test.domain_ids[part] == t.index).all()
    info = describe_tasks(tasks, train)
    assert json.loads(json.dumps(info)) == info and [r["domains"] for r in info["tasks"]] == [[d] for d in ANCHORS_ORDER]


def test_a_subset_of_domains_loads_and_the_six_task_order_names_the_missing(tmp_path):
    write_domainnet(tmp_path, domainnet_files(domains=("sketch", "real")))
    ds = load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.domains == ["real", "sketch"]  # the anchors' order, whatever the files' order
    with pytest.raises(ConfigError, match=r"domain_order='quickdraw' is invalid; allowed: real, sketch .*"
                                          r"not found: quickdraw, painting, infograph, clipart\)$"):
        make_tasks("domain", ds, 6, 0, domain_order=ANCHORS_ORDER)
    assert [t.domains for t in make_tasks("domain", ds, 2, 0)] == [["real"], ["sketch"]]
    (tmp_path / "sketch_test.txt").unlink()
    test = load_dataset("domainnet", "test", tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="the domainnet test split has no 'sketch' images"):
        task_test_indices("domain", make_tasks("domain", ds, 2, 0), test)


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


BAD_LINES = [  # (line appended to real_train.txt as its line 10, expected message after "real_train.txt:10: ")
    ("garbage", "cannot parse 'garbage'; expected '<domain>/<class>/<file> <label>'"),
    ("real/bee/x.jpg seventeen", "cannot parse 'real/bee/x.jpg seventeen'"),
    ("real/x.jpg 3", "cannot parse 'real/x.jpg 3'"),
    ("real/bee/x.jpg 345", r"label 345 of 'real/bee/x.jpg' is outside \[0, 345\)"),
    ("real/bee/x.jpg -1", r"label -1 of 'real/bee/x.jpg' is outside \[0, 345\)"),
    ("photo/bee/x.jpg 17", "unknown domain 'photo' in 'photo/bee/x.jpg'; DomainNet domains: real, quickdraw, "),
    ("sketch/bee/x.jpg 17", "'sketch/bee/x.jpg' is a 'sketch' image but real_train.txt lists 'real' images"),
    ("real/bee/missing.jpg 17", "listed image 'real/bee/missing.jpg' does not exist in "),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_bad_list_lines_name_the_file_and_line(tmp_path, line, message):
    write_domainnet(tmp_path)
    _append(tmp_path / "real_train.txt", line)
    with pytest.raises(DataError, match=f"real_train.txt:10: {message}") as e:
        load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["zip", "tar.xz"])
def test_listed_image_missing_from_an_archive(tmp_path, kind):
    write_domainnet(tmp_path, archives={"real": kind})
    _append(tmp_path / "real_train.txt", "real/bee/missing.jpg 17")
    with pytest.raises(DataError, match=rf"real_train.txt:10: listed image 'real/bee/missing.jpg' does not exist in "
                                        rf".*real.{kind}$"):
        load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")


def test_missing_lists_folders_and_data_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset 'domainnet' split 'train' not found; .*<domain>_train.txt file lists"):
        load_dataset("domainnet", "train", tmp_path / "nowhere")
    write_domainnet(tmp_path)
    for f in tmp_path.glob("*_test.txt"):
        f.unlink()
    with pytest.raises(DataError, match=r"has no test file lists: none of real_test.txt, quickdraw_test.txt, .* exist"):
        load_dataset("domainnet", "test", tmp_path)
    shutil.rmtree(tmp_path / "clipart")
    with pytest.raises(DataError, match=r"clipart_train.txt lists 'clipart' images but there is no .*clipart/ folder"):
        load_dataset("domainnet", "train", tmp_path)
    (tmp_path / "clipart.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"cannot read archive .*clipart.zip"):
        load_dataset("domainnet", "train", tmp_path, cache_dir=tmp_path / "cache")

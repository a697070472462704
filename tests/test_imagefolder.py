"""Image folders: class ids, discovery, ADM-style resize + centre crop, flips, errors, unreadable files."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vgen.data import ImageFolderClasses, class_names, open_class_dataset
from vgen.data.imagefolder import center_crop_resize
from vgen.errors import UserError

R = 32


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return str(path)


def make_tree(root):
    """3 classes x 4 images: varied sizes and modes, an upper-case extension, nesting, and things to ignore."""
    _save(root / "dog" / "a.jpg", Image.fromarray(_rgb(80, 50, 1)))             # 50 wide, 80 high
    _save(root / "dog" / "b.PNG", Image.fromarray(_rgb(64, 97, 2)))             # upper-case extension
    _save(root / "dog" / "sub" / "deep" / "c.png", Image.fromarray(_rgb(40, 40, 3)).convert("L"))  # nested, grayscale
    _save(root / "dog" / "d.bmp", Image.fromarray(_rgb(33, 70, 4)))
    _save(root / "cat" / "x.png", Image.fromarray(np.dstack([_rgb(70, 90, 5), np.full((70, 90), 7, np.uint8)])))  # RGBA
    _save(root / "cat" / "y.webp", Image.fromarray(_rgb(100, 64, 6)))
    _save(root / "cat" / "z.tif", Image.fromarray(_rgb(65, 65, 7)).convert("P"))  # palette
    _save(root / "cat" / "w.JPEG", Image.fromarray(_rgb(120, 200, 8)))
    for k in range(4):
        _save(root / "bird" / f"{k}.png", Image.fromarray(_rgb(48 + 9 * k, 64, 10 + k)))
    # ignored: hidden files and folders, non-images, files directly in the root, a hidden class folder
    (root / "dog" / ".hidden.jpg").write_bytes(b"not an image")
    _save(root / "dog" / ".cache" / "e.png", Image.fromarray(_rgb(40, 40, 9)))
    (root / "cat" / "notes.txt").write_text("hello")
    _save(root / "loose.png", Image.fromarray(_rgb(40, 40, 20)))
    _save(root / ".trash" / "f.png", Image.fromarray(_rgb(40, 40, 21)))
    return root


def rel(ds):
    return [os.path.relpath(p, ds.root) for p in ds.paths]


def one_line_naming(err, path):
    msg = str(err.value)
    return "\n" not in msg and str(path) in msg


def test_classes_from_sorted_folder_names_and_discovery(tmp_path):
    ds = ImageFolderClasses(make_tree(tmp_path / "data"), R)
    assert ds.classes == ["bird", "cat", "dog"] and ds.num_classes == 3
    assert ds.class_prompts == ds.classes and class_names(ds) == ["bird", "cat", "dog"]
    assert len(ds) == 12 and ds.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert rel(ds) == [f"bird/{k}.png" for k in range(4)] + ["cat/w.JPEG", "cat/x.png", "cat/y.webp", "cat/z.tif"] + [
        "dog/a.jpg", "dog/b.PNG", "dog/d.bmp", "dog/sub/deep/c.png"]
    for i in range(len(ds)):
        it = ds[i]
        assert it["label"] == ds.labels[i] == ds.label(i) and it["path"] == ds.paths[i]
    assert ds.skipped == []


def test_items_are_rgb_float_squares_in_unit_range(tmp_path):
    ds = ImageFolderClasses(make_tree(tmp_path / "data"), R)
    for i in range(len(ds)):
        img = ds[i]["image"]
        assert img.shape == (3, R, R) and img.dtype == torch.float32
        assert 0 <= img.min() and img.max() <= 1
    gray = ds.item(rel(ds).index("dog/sub/deep/c.png"))["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # RGBA: alpha dropped (as PIL's convert("RGB") in the reference pipelines), colour kept
    rgba = ds.item(rel(ds).index("cat/x.png"))["image"]
    src = Image.open(tmp_path / "data" / "cat" / "x.png").convert("RGB")
    assert torch.equal(rgba, torch.from_numpy(center_crop_resize(src, R)).permute(2, 0, 1).float() / 255)
    assert ds[-1]["path"] == ds.paths[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_box_halving_and_centre_crop_at_the_pixel_level(tmp_path):
    # 128 x 64 image of 2-pixel-wide column stripes, stripe k of value 3k: one box halving (64 >= 2R)
    # gives 64 x 32 with column k = 3k exactly, no bicubic change (already R high), then columns 16..47.
    cols = np.repeat(np.arange(64, dtype=np.uint8) * 3, 2)
    img = np.broadcast_to(cols[None, :, None], (64, 128, 3)).copy()
    _save(tmp_path / "h" / "a" / "stripes.png", Image.fromarray(img))
    out = (ImageFolderClasses(tmp_path / "h", R)[0]["image"] * 255).round().to(torch.uint8)
    expected = torch.arange(16, 48, dtype=torch.uint8) * 3
    assert all(torch.equal(out[c, y], expected) for c in range(3) for y in range(R))
    # 64 x 160 of 2-pixel-high row stripes: halving gives 32 x 80, then rows 24..55 (crop_y = (80 - 32) // 2)
    rows = np.repeat(np.arange(80, dtype=np.uint8) * 3, 2)
    img = np.broadcast_to(rows[:, None, None], (160, 64, 3)).copy()
    _save(tmp_path / "v" / "a" / "stripes.png", Image.fromarray(img))
    out = (ImageFolderClasses(tmp_path / "v", R)[0]["image"] * 255).round().to(torch.uint8)
    expected = torch.arange(24, 56, dtype=torch.uint8) * 3
    assert all(torch.equal(out[c, :, x], expected) for c in range(3) for x in range(R))


def test_left_and_right_halves_land_where_the_centre_crop_puts_them(tmp_path):
    # 100 x 60, red left half, blue right half; no halving (60 < 2R), bicubic to 53 x 32, crop columns 10..41:
    # the colour edge (x = 50 -> 26.5 after resizing, the centre of resized column 26) is crop column 16's centre
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, :50, 0] = 255
    img[:, 50:, 2] = 255
    _save(tmp_path / "d" / "a" / "halves.png", Image.fromarray(img))
    out = ImageFolderClasses(tmp_path / "d", R)[0]["image"]
    red, blue = torch.tensor([1.0, 0, 0])[:, None, None], torch.tensor([0, 0, 1.0])[:, None, None]
    assert torch.allclose(out[:, :, :14], red.expand(3, R, 14), atol=1 / 255)
    assert torch.allclose(out[:, :, 20:], blue.expand(3, R, 12), atol=1 / 255)
    assert torch.allclose(out[:, :, 16], torch.tensor([0.5, 0, 0.5])[:, None].expand(3, R), atol=1 / 255)
    assert torch.allclose(out[:, :, 15], out[:, :, 17].flip(0), atol=1 / 255)  # red/blue mirror about column 16
    assert not torch.allclose(out[:, :, 15], out[:, :, 17], atol=0.1)


def reference_center_crop_arr(pil_image, image_size):
    """guided-diffusion's center_crop_arr (image_datasets.py), verbatim apart from names."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


@pytest.mark.parametrize("hw", [(80, 50), (64, 97), (33, 70), (200, 120), (256, 257), (31, 31), (1000, 130)])
def test_matches_adm_center_crop_arr(hw):
    img = Image.fromarray(_rgb(*hw, seed=sum(hw)))
    assert np.array_equal(center_crop_resize(img, R), reference_center_crop_arr(img, R))


def test_matches_torchvision_resize_and_center_crop_when_no_halving_applies():
    tv = pytest.importorskip("torchvision.transforms")
    # shorter side < 2R (no box halving) and the longer side resized to an exact integer at an even
    # distance from R: there torchvision's int() / round((L - R) / 2) agree with ADM's round() / floor
    for h, w in [(48, 96), (40, 60), (36, 54), (60, 40), (32, 100)]:
        img = Image.fromarray(_rgb(h, w, seed=h * w))
        ref = np.asarray(tv.CenterCrop(R)(tv.Resize(R, interpolation=tv.InterpolationMode.BICUBIC)(img)))
        assert np.array_equal(center_crop_resize(img, R), ref), (h, w)


def test_flip_is_an_exact_mirror_and_a_function_of_seed_step_index(tmp_path):
    make_tree(tmp_path / "data")
    ds = ImageFolderClasses(tmp_path / "data", R, flip=True)
    for i in (0, 5, 11):
        a, b = ds.item(i, flip=False), ds.item(i, flip=True)
        assert torch.equal(b["image"], a["image"].flip(-1)) and b["label"] == a["label"]
        assert not torch.equal(a["image"], b["image"])
    coins = [ds.flip_for(i, 7, s) for s in range(20) for i in range(len(ds))]
    assert coins == [ds.flip_for(i, 7, s) for s in range(20) for i in range(len(ds))]  # no hidden state
    assert 0.35 < np.mean(coins) < 0.65
    assert [ds.flip_for(i, 7, 3) for i in range(12)] != [ds.flip_for(i, 7, 4) for i in range(12)]
    assert [ds.flip_for(i, 7, 3) for i in range(12)] != [ds.flip_for(i, 8, 3) for i in range(12)]
    torch.manual_seed(0)  # global RNG plays no part
    ds.set_step(3, seed=7)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["image"], ds.item(i, ds.flip_for(i, 7, 3))["image"])
    plain = ImageFolderClasses(tmp_path / "data", R)
    assert not any(plain.flip_for(i, 7, s) for s in range(5) for i in range(len(plain)))
    assert torch.equal(plain[3]["image"], plain.item(3, False)["image"])


def test_order_is_deterministic_across_constructions_and_creation_order(tmp_path):
    make_tree(tmp_path / "one")
    a, b = ImageFolderClasses(tmp_path / "one", R), ImageFolderClasses(tmp_path / "one", R)
    assert a.paths == b.paths and a.labels == b.labels
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    # the same files created in the opposite order index the same way
    names = ["b/z.png", "b/a.png", "a/q/r.png", "a/m.png", "a/B.png", "a/c.png"]
    for root, order in (("two", names), ("three", names[::-1])):
        for k, n in enumerate(order):
            _save(tmp_path / root / n, Image.fromarray(_rgb(40, 40, names.index(n) + 0 * k)))
    two, three = ImageFolderClasses(tmp_path / "two", R), ImageFolderClasses(tmp_path / "three", R)
    assert rel(two) == rel(three) == ["a/B.png", "a/c.png", "a/m.png", "a/q/r.png", "b/a.png", "b/z.png"]


def test_folder_errors_are_one_line_user_errors_naming_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as e:
        ImageFolderClasses(missing, R)
    assert one_line_naming(e, missing)
    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    with pytest.raises(UserError, match="not a directory") as e:
        ImageFolderClasses(afile, R)
    assert one_line_naming(e, afile)
    flat = tmp_path / "flat"  # images but no class folders (hidden ones do not count)
    _save(flat / "a.png", Image.fromarray(_rgb(40, 40, 0)))
    _save(flat / ".hidden" / "b.png", Image.fromarray(_rgb(40, 40, 0)))
    with pytest.raises(UserError, match="no class subfolders") as e:
        ImageFolderClasses(flat, R)
    assert one_line_naming(e, flat)
    root = make_tree(tmp_path / "data")
    empty = root / "emu"  # only a non-image, a hidden image and an empty subfolder
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    _save(empty / ".a.png", Image.fromarray(_rgb(40, 40, 0)))
    with pytest.raises(UserError, match="has no images") as e:
        ImageFolderClasses(root, R)
    assert one_line_naming(e, empty)
    with pytest.raises(UserError, match="on_error"):
        ImageFolderClasses(tmp_path / "flat", R, on_error="ignore")


def _corrupt(root):
    """A random-bytes x.jpg and a PNG cut in half, in two different classes."""
    rnd = root / "cat" / "x.jpg"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    good = root / "bird" / "1.png"
    cut = root / "bird" / "1b.png"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return str(cut), str(rnd)


def test_corrupt_files_raise_by_default(tmp_path):
    root = make_tree(tmp_path / "data")
    bad = _corrupt(root)
    ds = ImageFolderClasses(root, R)  # listing does not open files
    assert len(ds) == 14
    for path in bad:
        with pytest.raises(UserError, match="cannot read image") as e:
            ds.item(ds.paths.index(path))
        assert one_line_naming(e, path)
    with pytest.raises(UserError, match="cannot read image") as e:
        ds.scan()
    assert one_line_naming(e, bad[0])  # the first bad file in index order


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "data")
    bad = _corrupt(root)
    ds = ImageFolderClasses(root, R, on_error="skip")
    assert ds.skipped == sorted(bad) and len(ds) == 12
    assert not set(bad) & set(ds.paths)
    assert ds.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert all(ds[i]["image"].shape == (3, R, R) for i in range(len(ds)))
    again = ImageFolderClasses(root, R, on_error="skip")
    assert again.paths == ds.paths and again.skipped == ds.skipped


def test_skip_leaving_a_class_empty_is_an_error(tmp_path):
    root = make_tree(tmp_path / "data")
    only = root / "zebra" / "only.jpg"
    only.parent.mkdir()
    only.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="no readable images") as e:
        ImageFolderClasses(root, R, on_error="skip")
    assert one_line_naming(e, root / "zebra")


def test_file_readable_at_scan_but_failing_at_load_is_a_one_line_error(tmp_path):
    root = make_tree(tmp_path / "data")
    good = (root / "dog" / "a.jpg").read_bytes()
    cut = root / "dog" / "a2.jpg"
    cut.write_bytes(good[: len(good) // 2])  # header intact: verify() passes, decoding fails
    ds = ImageFolderClasses(root, R, on_error="skip")
    assert ds.skipped == [] and str(cut) in ds.paths
    with pytest.raises(UserError, match="cannot read image") as e:
        ds[ds.paths.index(str(cut))]
    assert one_line_naming(e, cut) and e.value.__cause__ is None and e.value.__suppress_context__


def test_open_class_dataset(tmp_path):
    from vgen.world.datasets import CLASS_PROMPTS, ShapesClassDataset

    shapes = open_class_dataset("shapes", 32, size=10, seed=3)
    assert isinstance(shapes, ShapesClassDataset)
    assert (len(shapes), shapes.resolution, shapes.seed) == (10, 32, 3)
    assert shapes[0]["image"].shape == (3, 32, 32)
    assert class_names(shapes) == list(CLASS_PROMPTS)
    make_tree(tmp_path / "data")
    folder = open_class_dataset(str(tmp_path / "data"), 16, size=10, seed=3, flip=True, on_error="skip")
    assert isinstance(folder, ImageFolderClasses) and len(folder) == 12
    assert (folder.resolution, folder.flip, folder.on_error) == (16, True, "skip")
    assert folder[0]["image"].shape == (3, 16, 16)
    assert class_names(folder) == ["bird", "cat", "dog"]


def test_batches_through_a_dataloader(tmp_path):
    from torch.utils.data import DataLoader

    from vgen.world.datasets import collate

    make_tree(tmp_path / "data")
    ds = ImageFolderClasses(tmp_path / "data", R)
    batch = next(iter(DataLoader(ds, batch_size=5, collate_fn=collate)))
    assert batch["image"].shape == (5, 3, R, R) and batch["label"].tolist() == ds.labels[:5]
    assert batch["path"] == ds.paths[:5]

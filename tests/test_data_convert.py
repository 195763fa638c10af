"""surg3d convert / surg3d synth and the bag reader: bag content checked with rosbags' own deserializer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bag_support import die_writing
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from surg3d_nodes.cli import convert as convert_cli
from surg3d_nodes.cli import synth as synth_cli
from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.data.bags import BagReader, BagWriter, bag_path_taken, recover_unclosed
from surg3d_nodes.data.datasets import open_dataset

STORE = get_typestore(Stores.ROS2_KILTED)


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(bag stamp, deserialized message)] with rosbags (independent of our reader)."""
    out: dict[str, list] = {}
    with Reader(path) as r:
        for conn, stamp, raw in r.messages():
            out.setdefault(conn.topic, []).append((stamp, STORE.deserialize_cdr(raw, conn.msgtype)))
    return out


def img(msg) -> np.ndarray:
    ch = {"rgb8": 3, "mono8": 1, "32FC1": 1}[msg.encoding]
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    a = np.frombuffer(msg.data.tobytes(), dtype=dtype).reshape(msg.height, msg.width, ch)
    return a[..., 0] if ch == 1 else a


def stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.partial")]


@pytest.fixture(scope="module")
def endonerf_bag(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = shared_data / "endonerf" / "pulling_soft_tissues"
    out = tmp_path_factory.mktemp("conv") / "endonerf_bag"
    assert convert_cli.main(["endonerf", str(src), str(out)]) == 0
    return src, out


def test_endonerf_bag_equals_dataset(endonerf_bag) -> None:
    src, out = endonerf_bag
    bag = read_bag(out)
    ds = open_dataset("endonerf", src)
    n = len(ds)
    for topic in ("/stereo/left/image_raw", "/stereo/right/image_raw", "/stereo/left/camera_info",
                  "/stereo/right/camera_info", "/camera/pose", "/tf", "/dataset/depth", "/dataset/tool_mask"):
        assert len(bag[topic]) == n, topic
    for i in (0, 31, 62):
        f = ds.frame(i)
        t_bag, left = bag["/stereo/left/image_raw"][i]
        assert t_bag == stamp(left) == f.stamp_ns
        left_png = cv2.imread(str(src / "images" / f"frame-{i:06d}.color.png"))[..., ::-1]
        assert np.array_equal(img(left), left_png)
        right = bag["/stereo/right/image_raw"][i][1]
        assert np.array_equal(img(right), cv2.imread(str(src / "images_right" / f"{i:06d}.png"))[..., ::-1])
        depth = img(bag["/dataset/depth"][i][1])
        raw = cv2.imread(str(src / "depth" / f"frame-{i:06d}.depth.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(np.isnan(depth), raw == 0)
        assert np.array_equal(depth[raw > 0], raw[raw > 0].astype(np.float32) * np.float32(1e-3))
        mask = img(bag["/dataset/tool_mask"][i][1])
        assert np.array_equal(mask > 0, cv2.imread(str(src / "masks" / f"frame-{i:06d}.mask.png"), 0) > 127)
        info_l, info_r = bag["/stereo/left/camera_info"][i][1], bag["/stereo/right/camera_info"][i][1]
        assert np.array_equal(info_l.k.reshape(3, 3), f.cam_left.K)
        assert np.array_equal(info_r.p.reshape(3, 4), f.cam_right.P)
        assert info_r.p[3] == pytest.approx(-569.4682 * 0.00428, abs=1e-3)
        pose = bag["/camera/pose"][i][1]
        T = pose_matrix([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z],
                        [pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
                         pose.pose.orientation.w])
        assert np.allclose(T, f.pose, atol=1e-12) and pose.header.frame_id == "world"
        tf = bag["/tf"][i][1].transforms[0]
        assert tf.header.frame_id == "world" and tf.child_frame_id == info_l.header.frame_id


def test_bag_reader_survives_truncation(endonerf_bag, tmp_path: Path) -> None:
    _, out = endonerf_bag
    full = list(BagReader(out).messages())
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    mcap = next(damaged.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    reader = BagReader(damaged)
    part = list(reader.messages())
    assert 0 < len(part) < len(full)
    assert all(a.data == b.data and a.topic == b.topic for a, b in zip(part, full, strict=False))
    assert reader.stopped is not None and str(mcap) in reader.stopped and "truncated" in reader.stopped


def test_synthetic_cli_and_convert(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert synth_cli.main([str(out), "--width", "64", "--height", "48", "--frames", "4",
                           "--instruments", "2", "--motion", "moving"]) == 0
    assert (out / "contact_sheet.png").is_file() and (out / "endonerf" / "poses_bounds.npy").is_file()
    bag = read_bag(out / "bag")
    assert len(bag["/dataset/tissue_image"]) == 4 and len(bag["/tf"]) == 4
    ds = open_dataset("synthetic", out / "endonerf")
    f = ds.frame(3)
    assert np.array_equal(img(bag["/dataset/tissue_image"][3][1]), f.extras["tissue"])
    assert np.array_equal(img(bag["/dataset/depth"][3][1]), f.depth, equal_nan=True)
    assert synth_cli.main([str(out), "--frames", "2"]) == 2          # will not overwrite
    again = tmp_path / "bag2"
    assert convert_cli.main(["synthetic", str(out / "endonerf"), str(again), "--storage", "sqlite3",
                             "--topic-prefix", "/sim", "--max-frames", "2"]) == 0
    assert (again / "metadata.yaml").is_file() and next(again.glob("*.db3"))
    bag2 = read_bag(again)
    assert len(bag2["/sim/stereo/left/image_raw"]) == 2 and "/tf" in bag2


def test_stereomis_convert(tmp_path: Path) -> None:
    from test_data_stereomis import D1, write_sequence

    write_sequence(tmp_path / "P1")
    assert convert_cli.main(["stereomis", str(tmp_path / "P1"), str(tmp_path / "bag")]) == 0
    bag = read_bag(tmp_path / "bag")
    info = bag["/stereo/left/camera_info"][0][1]
    assert info.distortion_model == "rational_polynomial" and np.allclose(info.d, D1)
    assert len(bag["/camera/pose"]) == len(bag["/stereo/left/image_raw"]) == 6


def test_bad_inputs_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert convert_cli.main(["endonerf", str(tmp_path / "missing"), str(out)]) == 2
    assert "expected a directory at" in capsys.readouterr().err
    no_leftovers(tmp_path, "out")
    # a clip whose last left image is corrupt: found only while converting, after most frames were written
    clip = tmp_path / "clip"
    synth_cli.main([str(tmp_path / "s"), "--width", "48", "--height", "32", "--frames", "3", "--no-bag"])
    shutil.copytree(tmp_path / "s" / "endonerf", clip)
    last = clip / "images" / "frame-000002.color.png"
    last.write_bytes(last.read_bytes()[:40])
    assert convert_cli.main(["endonerf", str(clip), str(out)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    no_leftovers(tmp_path, "out")
    (out).mkdir()
    (out / "keep.txt").write_text("x")
    assert convert_cli.main(["synthetic", str(tmp_path / "s" / "endonerf"), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").is_file()


def test_bag_writer_abort_on_exception(tmp_path: Path) -> None:
    from std_msgs.msg import String

    with pytest.raises(RuntimeError), BagWriter(tmp_path / "b") as w:
        w.write("/x", String(data="a"), 1)
        raise RuntimeError("boom")
    no_leftovers(tmp_path, "b")


def test_a_bag_left_unclosed_by_a_dead_writer_is_closed_with_what_it_holds(tmp_path: Path) -> None:
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    out = tmp_path / "recording_1"
    assert die_writing(out) == -6 and not out.exists() and bag_path_taken(out)
    mine = BagWriter(tmp_path / "recording_2")           # staged by a live process (this one): left alone
    mine.write("/x", String(data="live"), 5)
    recovered = recover_unclosed(tmp_path)
    assert [r.path for r in recovered] == [out]
    r = recovered[0]
    assert r.stopped is not None and "truncated" in r.stopped   # the chunk in the writer's memory died with it
    with Reader(out) as reader:                                  # rosbags' own reader: a closed, indexed bag
        got = [deserialize_message(raw, String).data[:6] for _, _, raw in reader.messages()]
    assert len(got) == r.count > 1000 and got == [f"{i:06d}" for i in range(r.count)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [f".recording_2.partial-{os.getpid()}"]
    assert recover_unclosed(tmp_path) == []                     # nothing left to close
    assert mine.close() == tmp_path / "recording_2"


def test_a_recovery_cut_short_is_done_again_from_the_staged_bag(tmp_path: Path) -> None:
    """A recovery whose process ended before its rewritten bag was in place left a partial copy beside the dead
    writer's staged bag: the next recovery drops the copy and rewrites the whole staged bag."""
    out = tmp_path / "recording_1"
    assert die_writing(out) == -6
    [staged] = [p for p in tmp_path.iterdir() if p.name.startswith(".recording_1.partial-")]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cut = tmp_path / f".recording_1.recovering-{int(gone.stdout)}"        # a dead recovery's half-written copy
    shutil.copytree(staged, cut)
    for f in (cut / "recording_1").glob("*.mcap"):
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 3])
    [r] = recover_unclosed(tmp_path)
    assert r.path == out and r.count > 1000 and sum(1 for _ in BagReader(out).messages()) == r.count
    assert [p.name for p in tmp_path.iterdir()] == ["recording_1"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_flushed_bag_loses_nothing_to_a_crash(tmp_path: Path, storage: str) -> None:
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    out = tmp_path / "recording"
    assert die_writing(out, count=40, storage=storage, flush=True) == -6   # 40 kB: no MCAP chunk full yet
    [r] = recover_unclosed(tmp_path, storage)
    with Reader(out) as reader:
        got = [deserialize_message(raw, String).data[:6] for _, _, raw in reader.messages()]
    assert r.count == 40 and got == [f"{i:06d}" for i in range(40)]

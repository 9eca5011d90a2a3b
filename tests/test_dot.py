"""meshir-dot: the .dot text of a small program has its nodes and edges; SVG and
PNG drawings are valid files of the same picture, naming ops and collectives;
local values carry their per-device types and layouts; --collapse folds
repeated layers; --mesh-view shows each device's slice; errors exit 2."""
from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from meshir.tools import dot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.mir")
TRANSFORMER = str(EXAMPLES / "transformer_lm.mir")
TRAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd"


def draw(tmp_path: Path, name: str, *flags: str, source: str = MLP) -> Path:
    out = tmp_path / name
    assert dot.main([source, "-o", str(out), *flags]) == 0
    return out


NODE = re.compile(r'^(\w+) \[.*?label=("(?:[^"\\]|\\.)*"|\w+)', re.MULTILINE)
EDGE = re.compile(r"^(\w+) -> (\w+);$", re.MULTILINE)


def nodes_by_label(text: str) -> dict[str, str]:
    """Node name -> its label's first line, for every node of a .dot text."""
    return {name: label.strip('"').split("\\n")[0] for name, label in NODE.findall(text)}


def edges_by_label(text: str) -> set[tuple[str, str]]:
    labels = nodes_by_label(text)
    return {(labels[tail], labels[head]) for tail, head in EDGE.findall(text)}


def test_dot_text_of_the_mlp_has_its_ops_values_and_edges(tmp_path):
    text = draw(tmp_path, "mlp.dot").read_text()
    assert sorted(nodes_by_label(text).values()) == sorted([
        "%x: f32[batch=64, pixels=784]", "%y: i32[batch=64]", "read @w1", "einsum", "read @b1", "add", "relu",
        "read @w2", "einsum", "one_hot", "softmax_cross_entropy", "reduce_mean", "return"])
    assert edges_by_label(text) == {
        ("%x: f32[batch=64, pixels=784]", "einsum"), ("read @w1", "einsum"), ("einsum", "add"), ("read @b1", "add"),
        ("add", "relu"), ("relu", "einsum"), ("read @w2", "einsum"), ("%y: i32[batch=64]", "one_hot"),
        ("einsum", "softmax_cross_entropy"), ("one_hot", "softmax_cross_entropy"),
        ("softmax_cross_entropy", "reduce_mean"), ("reduce_mean", "return")}
    assert "%h: f32[batch=64, hidden=512]" in text and 'label="func @loss: global program on @m <rows=2, cols=2>"' in text


def test_after_spmd_values_carry_per_device_types_and_layouts(tmp_path):
    text = draw(tmp_path, "local.dot", "--after", "spmd").read_text()
    assert "func @loss: local program, per device of @m <rows=2, cols=2>" in text
    assert "%h: f32[batch=32, hidden=256]\\nlayout {batch: rows, hidden: cols}" in text
    assert "%logits: f32[batch=32, classes=10]\\nlayout {batch: rows}, partial sum over [cols]" in text
    # Collectives stand out: their own shape and colour, their axes and the bytes each device sends.
    assert 'shape=hexagon' in text and 'all_reduce (sum) over [cols]' in text and "sends 1.25 KiB per device" in text


def test_svg_is_xml_naming_the_ops_and_collectives(tmp_path):
    svg = draw(tmp_path, "local.svg", "--after", "spmd")
    root = ElementTree.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(element.text or "" for element in root.iter("{http://www.w3.org/2000/svg}text"))
    for name in ("einsum", "relu", "softmax_cross_entropy", "read @w1", "all_reduce (sum) over [cols]", "return"):
        assert name in texts


def test_png_is_the_same_picture_as_the_svg(tmp_path):
    png = draw(tmp_path, "local.png", "--after", "spmd").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    svg = ElementTree.parse(draw(tmp_path, "local.svg", "--after", "spmd")).getroot()
    # Graphviz draws PNGs at 96 dpi; SVG sizes are in points (1/72 inch).
    assert width == pytest.approx(float(svg.get("width").removesuffix("pt")) * 96 / 72, abs=1)
    assert height == pytest.approx(float(svg.get("height").removesuffix("pt")) * 96 / 72, abs=1)


def test_collapse_folds_all_layers_but_the_first(tmp_path):
    full = draw(tmp_path, "full.dot", source=TRANSFORMER).read_text()
    text = draw(tmp_path, "folded.dot", "--collapse", source=TRANSFORMER).read_text()
    assert "read @l0.wq" in text and "read @l1.wq" not in text and "%l1_xn" not in text
    assert "1 more layer like l0" in text and 'label="layer l0"' in text
    assert "%logits:" in text and "%x2:" in text  # what follows the layers is drawn in full
    folded_ops = int(re.search(r"\((\d+) ops folded\)", text).group(1))
    assert len(nodes_by_label(text)) == len(nodes_by_label(full)) - folded_ops + 1  # one node stands for them


def test_collapse_of_a_train_step_keeps_the_backward_of_the_first_layer(tmp_path):
    text = draw(tmp_path, "step.dot", "--passes", TRAIN, "--after", "spmd", "--collapse", source=TRANSFORMER).read_text()
    assert "%grad_l0.wq:" in text and "%grad_l1.wq:" not in text and "like l0" in text


def test_mesh_view_shows_each_devices_slice(tmp_path):
    text = draw(tmp_path, "mesh.dot", "--after", "spmd", "--mesh-view", "%h").read_text()
    assert "%h: f32[batch=64, hidden=512] on @m &lt;rows=2, cols=2&gt;, layout {batch: rows, hidden: cols}" in text
    cells = text.split("<TD>")[1:]
    assert len(cells) == 4
    assert "device 3</B><BR/>rows=1 cols=1<BR/>batch[32:64]<BR/>hidden[256:512]" in cells[3]
    assert "device 1</B><BR/>rows=0 cols=1<BR/>batch[0:32]<BR/>hidden[256:512]" in cells[1]


def test_mesh_view_of_a_global_value_and_a_partial_sum(tmp_path):
    text = draw(tmp_path, "global.dot", "--mesh-view", "logits").read_text()
    assert "layout {batch: rows}" in text and "device 1</B><BR/>rows=0 cols=1<BR/>batch[0:32]<BR/>classes[0:10]" in text
    partial = draw(tmp_path, "partial.dot", "--after", "spmd", "--mesh-view", "logits").read_text()
    assert "partial sum over [cols]" in partial and partial.count("partial sum<") == 4


def test_without_graphviz_svg_fails_clearly_and_dot_still_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` program on it
    assert dot.main([MLP, "-o", str(tmp_path / "mlp.svg")]) == 2
    err = capsys.readouterr().err
    assert "Graphviz's `dot` program" in err and "apt-get install graphviz" in err and "Traceback" not in err
    assert not (tmp_path / "mlp.svg").exists()
    assert dot.main([MLP, "-o", str(tmp_path / "mlp.dot")]) == 0


@pytest.mark.parametrize("flags,message", [
    (["-o", "out.pdf"], "unknown output kind '.pdf'"),
    (["-o", "out.dot", "--after", "dce"], "--after: pass 'dce' is not in the pipeline 'layout,spmd'"),
    (["-o", "out.dot", "--mesh-view", "nothing"], "--mesh-view: no value %nothing"),
    (["-o", "out.dot", "--entry", "@missing"], "no function @missing"),
])
def test_user_errors_exit_2_without_output(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    assert dot.main([MLP, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())

"""Meshes, layout rules (meshir and Mesh TensorFlow spellings) and value layouts."""
import pytest

from meshir.diagnostics import MeshirError
from meshir.dtypes import f32
from meshir.mesh import LayoutRules, Mesh, parse_layout_spec, parse_mesh_spec
from meshir.types import Dim, tensor_type


def test_mesh_spec_both_spellings():
    for text in ("rows:2,cols:4", "rows:2;cols:4", " rows = 2 , cols = 4 "):
        mesh = parse_mesh_spec(text, "m")
        assert mesh.axis_names == ("rows", "cols") and mesh.shape == (2, 4) and mesh.size == 8


@pytest.mark.parametrize("text", ["rows", "rows:two", "rows:2,rows:2", "", "rows:0"])
def test_bad_mesh_specs(text):
    with pytest.raises(MeshirError):
        parse_mesh_spec(text)


def test_layout_spec_spellings_and_tuples():
    expected = {"batch": ("rows",), "hidden": ("cols",), "seq": ("rows", "cols")}
    for text in ("batch:rows,hidden:cols,seq:(rows,cols)", "batch:rows;hidden:cols;seq:(rows,cols)"):
        assert parse_layout_spec(text).as_dict() == expected


@pytest.mark.parametrize("text,needle", [
    ("batch", "expected DIM:AXIS"),
    ("seq:(rows,rows)", "uses mesh axis 'rows' twice"),
    ("batch:rows,batch:cols", "two rules"),
    ("batch:(rows,2x)", "bad mesh axis name"),
])
def test_bad_layout_specs(text, needle):
    with pytest.raises(MeshirError, match=needle.replace("(", r"\(")):
        parse_layout_spec(text)


def test_row_major_device_numbering_and_groups():
    mesh = Mesh("m", (Dim("rows", 2), Dim("cols", 4)))
    assert mesh.coords(5) == {"rows": 1, "cols": 1}
    assert [mesh.device(mesh.coords(d)) for d in range(8)] == list(range(8))
    assert list(mesh.groups(("cols",))) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(mesh.groups(("rows",))) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert list(mesh.groups(("rows", "cols"))) == [list(range(8))]
    assert list(mesh.groups(("cols", "rows"))) == [[0, 4, 1, 5, 2, 6, 3, 7]]
    assert mesh.index_in_group(6, ("cols", "rows")) == 5


def test_value_layout_skips_axes_used_by_earlier_dims():
    rules = LayoutRules.of({"batch": "rows", "hidden": ("rows", "cols")})
    layout = rules.layout_of(tensor_type(f32, batch=8, hidden=16))
    assert layout.axes == (("rows",), ("cols",))
    mesh = Mesh("m", (Dim("rows", 2), Dim("cols", 4)))
    assert layout.local_type(tensor_type(f32, batch=8, hidden=16), mesh) == tensor_type(f32, batch=4, hidden=4)
    alone = rules.layout_of(tensor_type(f32, hidden=16))
    assert alone.axes == (("rows", "cols"),)
    assert alone.local_type(tensor_type(f32, hidden=16), mesh).shape == (2,)


def test_indivisible_split_names_dim_axis_and_sizes():
    mesh = Mesh("m", (Dim("rows", 2), Dim("cols", 4)))
    rules = LayoutRules.of({"hidden": "cols"})
    with pytest.raises(MeshirError, match="dimension 'hidden' of size 6 .* axis cols of size 4"):
        rules.layout_of(tensor_type(f32, hidden=6)).local_type(tensor_type(f32, hidden=6), mesh)


def test_rules_against_mesh_name_unknown_axis():
    mesh = Mesh("m", (Dim("rows", 2),))
    with pytest.raises(MeshirError, match="axis 'cols', which mesh @m does not have"):
        LayoutRules.of({"batch": "cols"}).check_against(mesh)

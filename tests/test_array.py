"""A cluster array's task runs the Nth cell of the study, in the order the runner prints."""

import pytest

from alexnet_lightning.study.arguments import cells, parse_args, study_cells


def test_cell_n_is_the_nth_of_the_study_order_and_out_of_range_is_refused(capsys):
    study = ["--no-lrn", "--tanh", "--seeds", "2"]
    order = study_cells(parse_args(study))
    assert order == cells(parse_args(study)) and len(order) == 6
    for index, cell in enumerate(order):
        assert cells(parse_args([*study, "--cell", str(index)])) == [cell]
    for bad in ("6", "-1"):
        with pytest.raises(SystemExit):
            parse_args([*study, "--cell", bad])
        assert f"--cell {bad}: the study has 6 cell(s), numbered from 0" in capsys.readouterr().err

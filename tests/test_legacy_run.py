"""A run file written before schemes and objectives were plug-ins (tests/data/v1-aborted.h5, made by
tests/data/make_v1_run.py at commit 03f7bac) still opens, inspects and resumes: its recipe names
no scheme and no objective, which means the cascade and supervised PIB, as then."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import twin_bench
from fault_helpers import assert_checkpoints_once, assert_every_step_once, assert_features_complete
from labpnn import cli
from labpnn.engine import Run, State
from labpnn.runlog import RunReader

V1 = Path(__file__).parent / "data" / "v1-aborted.h5"
# what the code of 03f7bac recorded when it resumed this file to its end
UNIT1_I_YZ = [1.1951713562011719, 1.0554606914520264, 1.1062946319580078, 1.316972017288208,
              1.0693042278289795, 1.3465819358825684]
TEST_ACCURACY = 0.44


def test_a_v1_run_file_opens_inspects_and_resumes(tmp_path, capsys):
    path = tmp_path / "v1.h5"
    shutil.copy(V1, path)
    with RunReader(path) as reader:
        assert reader.state == "idle" and "stopped at unit 1, step 3" in reader.reason
        assert "scheme" not in reader.recipe and "objective" not in reader.recipe
        assert reader.unit(1).info_plane["step"].tolist() == [0, 1, 2, 3]
    assert cli.main(["inspect", str(path)]) == 0
    assert "state: idle (aborted: fixture: stopped at unit 1, step 3)" in capsys.readouterr().out

    run = Run.reopen(path, twin_bench(tmp_path))
    assert run.recipe.scheme_spec() == "cascade" and run.recipe.objective_spec(1) == "pib"
    assert run.execute() is State.DONE
    with RunReader(path) as reader:
        assert reader.state == "done"
        assert_every_step_once(reader, steps=6)
        assert_checkpoints_once(reader)
        assert_features_complete(reader)
        # the resumed optimisation is the one the old engine ran: same batches, same steps
        np.testing.assert_allclose(reader.unit(1).info_plane["I_YZ"], UNIT1_I_YZ, rtol=1e-5)
        assert reader.test_accuracy == pytest.approx(TEST_ACCURACY)

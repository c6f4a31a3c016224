"""Copy a simulated dataset with every session's bands rolled back by its simulated rotation (oracle, probes only).

    python tools/oracle_roll_dataset.py SRC DST [POPULATION_SEED]

Each session's electrodes are rolled by ``UserParams.electrode_rolls`` (user + donning rotation, to the nearest
electrode; the same roll as ``tools/signature_probe.py --align-bands 1``) with the runtime's ``roll_channels``, in
the file's stored units; metadata, splits and session attributes are kept, and ``dataset.json`` says
``oracle_band_aligned``. What a decoder that knew each band's rotation would see: no device knows it. SIMULATED DATA.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from emgkey.edge_runtime.recognizer import roll_channels
from emgkey.firmware_sim.population import Population
from emgkey.session import SessionFile, write_session


def main(src: Path, dst: Path, seed: int = 0) -> None:
    meta = json.loads((src / "dataset.json").read_text())
    assert meta.get("simulated") and int(meta["seed"]) == seed, f"{src} is not population {seed}'s simulated data"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "dataset.json").write_text(json.dumps({**meta, "oracle_band_aligned": True}, indent=2) + "\n")
    shutil.copy(src / "metadata.csv", dst / "metadata.csv")
    shutil.copytree(src / "splits", dst / "splits", dirs_exist_ok=True)
    pop = Population(seed)
    for p in sorted(src.glob("*.hdf5")):
        with SessionFile(p) as f:
            rows = f.read_raw()
            emg = np.stack([rows[n] for n in f.band_fields], axis=1)  # (T, n_bands, C) stored units
            md = f.metadata
            rolls = pop.user(int(md["sim_user_id"])).electrode_rolls(int(md["sim_session_idx"]), emg.shape[2])
            write_session(
                dst / p.name,
                profile=f.profile,
                timestamps=f.timestamps,
                emg=roll_channels(emg, rolls),
                keystrokes=f.keystrokes,
                prompts=f.prompts,
                session_name=f.session_name,
                user=f.user,
                condition=f.condition,
                extra_attrs={k: v for k, v in md.items() if k.startswith("sim")},
            )
    print("rolled", len(list(dst.glob("*.hdf5"))), "sessions into", dst)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)

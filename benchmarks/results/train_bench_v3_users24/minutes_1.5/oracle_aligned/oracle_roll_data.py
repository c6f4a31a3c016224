"""Throwaway (#3 probe): copy a simulated dataset with every session's bands rolled back by its simulated rotation
to the nearest electrode (oracle, the same roll as signature_probe --align-bands 1). SIMULATED DATA."""

import shutil
import sys
from pathlib import Path

import numpy as np

from emgkey.firmware_sim.population import Population
from emgkey.session import SessionFile, write_session

src, dst, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
dst.mkdir(parents=True, exist_ok=True)
pop = Population(seed)
for name in ("metadata.csv", "dataset.json"):
    shutil.copy(src / name, dst / name)
shutil.copytree(src / "splits", dst / "splits", dirs_exist_ok=True)
for p in sorted(src.glob("*.hdf5")):
    with SessionFile(p) as f:
        rows = f.read_raw()
        emg = np.stack([rows[n] for n in f.band_fields], axis=1)  # (T, bands, C) stored units (int16 or float32)
        md = f.metadata
        uid, sidx = int(md["sim_user_id"]), int(md["sim_session_idx"])
        user = pop.user(uid)
        worn = user.band_rotation_deg + user.session(sidx).donning_rotation_deg
        rolls = np.round(worn / (360.0 / f.profile.channels_per_band)).astype(int)
        out = np.stack([np.roll(emg[:, b, :], int(rolls[b]), axis=-1) for b in range(emg.shape[1])], axis=1)
        extra = {k: v for k, v in md.items() if k.startswith("sim")}
        write_session(
            dst / p.name,
            profile=f.profile,
            timestamps=f.timestamps,
            emg=out,
            keystrokes=f.keystrokes,
            prompts=f.prompts,
            session_name=f.session_name,
            user=f.user,
            condition=f.condition,
            extra_attrs=extra,
        )
print("rolled", len(list(dst.glob("*.hdf5"))), "sessions into", dst)

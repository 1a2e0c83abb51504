#!/usr/bin/env bash
# Prepare, on this machine, what a lent GPU machine needs to train the bundle (scripts/device_train.sh):
# the pure-Python wheels its image lacks and the SPM template files the data generator reads, in .device/
# (git-ignored; about 25 MB, under the 64 MiB a device call carries). Run once per checkout:
#   bash scripts/device_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .device && mkdir -p .device/whl .device/site/spm_runtime/_spm
# versions from constraints.txt; the device image has torch, numpy, scipy, scikit-learn, pandas, matplotlib, tensorboard
# (fire + termcolor: monai.bundle's command line; isal: the project's fast .nii.gz writing)
pkgs=$(grep -E '^(monai|pytorch-ignite|nibabel|captum|nilearn|fire|termcolor|isal)==' constraints.txt | sed 's/ *#.*//')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .device/whl $pkgs "termcolor==$("$PY" -c "import importlib.metadata as m; print(m.version('termcolor'))")"
# a stand-in spm_runtime package holding only the archive members bundle/data/templates.py reads
"$PY" - <<'PYEOF'
import zipfile
from bundle.data.templates import _SPM_MEMBERS, _SPM_ROOT, _SPM_SINGLE_SUBJECT, spm_archive_path

members = [_SPM_ROOT + m for m in (*_SPM_MEMBERS.values(), _SPM_SINGLE_SUBJECT)]
with zipfile.ZipFile(spm_archive_path()) as src, zipfile.ZipFile(".device/site/spm_runtime/_spm/_spm.ctf", "w", zipfile.ZIP_DEFLATED) as dst:
    for m in members:
        dst.writestr(m, src.read(m))
open(".device/site/spm_runtime/__init__.py", "w").close()
open(".device/site/spm_runtime/_spm/__init__.py", "w").close()
PYEOF
du -sh .device

"""The pack's checkpoint converter, runnable as a file from any folder, e.g. from the ComfyUI folder:

    python custom_nodes/<pack folder>/convert.py --official checkpoint_final.pt \
        --out models/kosmos_g/kosmos-g.safetensors

Inside ComfyUI the core is not an installed package, so `python -m kosmos_g_core.convert` fails there with "No module
named 'kosmos_g_core'". Python puts the folder of the file it runs first on sys.path, so this file finds the core
beside it. Same arguments as `python -m kosmos_g_core.convert` (`--help` lists them).
"""

import sys

from kosmos_g_core.convert import main

if __name__ == "__main__":
    sys.exit(main(prog=f"python {sys.argv[0]}"))

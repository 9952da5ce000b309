"""The joint AR + diffusion training recipe for tri-mode models (needs torch: pip install 'tridecode[train]').

Never imported by the runtime. Entry point: `python -m tridecode.train --help`.
"""

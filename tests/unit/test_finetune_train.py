"""The training schedule's reading order (finetune/train.py runs in the training venv; its
schedule is plain Python and imports nothing of torch)."""

import argparse
import random

from finetune.train import visits


def schedule(steps: int, accum: int) -> argparse.Namespace:
    return argparse.Namespace(steps=steps, accum=accum)


def shuffled(n: int) -> list[int]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    return order


def test_it_reads_every_trace_once_before_any_twice():
    order = shuffled(10)
    read = visits(order, 0, schedule(steps=5, accum=3))
    assert len(read) == 15
    assert read[:10] == order
    assert read[10:] == order[:5]


def test_it_reads_only_part_of_the_data_in_a_run_shorter_than_a_pass():
    read = visits(shuffled(10), 0, schedule(steps=2, accum=3))
    assert len(set(read)) == 6


def test_it_resumes_where_the_checkpoint_left_off():
    order, plan = shuffled(7), schedule(steps=4, accum=3)
    assert visits(order, 2, plan) == visits(order, 0, plan)[6:]
    assert visits(order, 4, plan) == []

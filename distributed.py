"""Data-parallel training under torchrun: the process group, rank shards of samplers, results shared by rank 0.

    torchrun --standalone --nproc_per_node=4 train.py --batch_size 32    # 4 processes, a global batch of 128

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in each process it starts; without them every function here
leaves a single process as it is, so train.py runs the same code either way. Rank 0 speaks for all: the
others print nothing and show no progress bar, and train.py lets only rank 0 write files.
"""
import builtins
import functools
import itertools
import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler
from tqdm import tqdm


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def is_main():
    """Whether this process writes and prints: rank 0, or the only process."""
    return rank() == 0


def rank():
    """This process's rank: 0 in one process."""
    return dist.get_rank() if is_distributed() else 0


def setup(device):
    """Joins the process group torchrun describes, if any (nccl on GPUs, gloo on CPU); returns this process's
    device: a GPU per local rank, or `device` unchanged."""
    if "RANK" not in os.environ:
        return device
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    if not is_main():
        silence()
    return str(device)


def teardown():
    if is_distributed():
        dist.destroy_process_group()


def silence():
    """No print and no progress bar from this process (torchvision's reference silences print the same way)."""
    builtins.print = lambda *args, **kwargs: None
    tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)


def wrap(model, find_unused_parameters=False):
    """The model in DistributedDataParallel, which averages the gradients over the ranks; itself in one process.
    `find_unused_parameters` lets parameters go without gradients, e.g. a frozen backbone."""
    if not is_distributed():
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ShardSampler(Sampler):
    """One rank's share of another sampler's draw: every rank draws the whole index list identically and keeps
    every world_size-th position from its rank on. The list is padded with its own beginning to a multiple of
    world_size, so that all ranks take as many steps: DistributedDataParallel's gradient averaging waits for every
    rank at every step.

    The draw is identical because it comes from `generator`, which train.py seeds from (seed, epoch) on every rank:
    samplers that draw from it directly, and those that draw from torch's global generator (torchsampler's) under a
    seed taken from it, since the global generator differs from rank to rank (train.seed_epoch folds the rank
    in)."""

    def __init__(self, sampler, rank, world_size, generator):
        self.sampler, self.rank, self.world_size, self.generator = sampler, rank, world_size, generator

    def __len__(self):
        return math.ceil(len(self.sampler) / self.world_size)

    def __iter__(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=self.generator)))
            indices = list(itertools.islice(itertools.cycle(self.sampler), len(self) * self.world_size))
        return iter(indices[self.rank::self.world_size])


def shard(sampler, generator):
    """This rank's ShardSampler of `sampler`, drawn from `generator`; the sampler itself in one process."""
    if not is_distributed():
        return sampler
    return ShardSampler(sampler, rank(), dist.get_world_size(), generator)


def run_on_main(function, *args):
    """function(*args) computed by rank 0 alone and its result (anything picklable) handed to every rank."""
    result = [function(*args) if is_main() else None]
    if is_distributed():
        dist.broadcast_object_list(result, src=0)
    return result[0]


def mean(value):
    """A number averaged over the ranks (itself in one process)."""
    if not is_distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    total = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def barrier():
    """Waits until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if is_distributed():
        dist.barrier()

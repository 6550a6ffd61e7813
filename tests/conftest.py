"""Settings shared by all tests."""
import torch

# Test tensors are tiny, so one intra-op thread is fastest; more threads thrash (10-50x slower) when the
# 2-core machine is busy with another torch process.
torch.set_num_threads(1)

"""What the exact-Gaussian oracle tests measure (tests/test_guidance.py, tests/test_external.py)."""
import torch


def regression_error(out, y, unknown, known, cov):
    """‖K̂ − K‖_F: K̂ regresses the sampled unknown frames ``out[:, :, unknown]`` on the known ``y``;
    K = Σ_ba Σ_aa⁻¹ is the exact conditional mean's map, E[x^b | x^a] = K x^a (a: known, b: unknown)."""
    b = out.shape[0]
    xb = out[:, :, unknown].reshape(b, -1).double()
    ya = y.reshape(b, -1).double()
    k_hat = torch.linalg.lstsq(ya, xb).solution.T
    k = cov[unknown][:, known] @ torch.linalg.inv(cov[known][:, known])
    return torch.linalg.norm(k_hat - k).item()

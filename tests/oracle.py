"""Exact eps predictors for Gaussian data, used as analytic oracles for the samplers.

Class k has x_0 ~ N(mu_k, s_k^2 I). Then x_t | k ~ N(sqrt(abar) mu_k, v_k I) with
v_k = abar s_k^2 + 1 - abar, and E[eps | x_t, k] = sqrt(1 - abar) (x_t - sqrt(abar) mu_k) / v_k.
Without a label, E[eps | x_t] = sum_k p(k | x_t) E[eps | x_t, k].
"""
import torch
from torch import nn

from diffusion import linear_betas


class GaussianOracle(nn.Module):
    def __init__(self, means, stds, priors=None, beta_1=1e-4, beta_T=0.02, T=1000):
        super().__init__()
        K = len(means)
        self.register_buffer('means', torch.as_tensor(means, dtype=torch.float64))  # K x C x H x W
        self.register_buffer('stds', torch.as_tensor(stds, dtype=torch.float64))    # K
        priors = torch.full((K,), 1.0 / K) if priors is None else torch.as_tensor(priors)
        self.register_buffer('log_priors', torch.log(priors.double()))
        self.register_buffer('alphas_bar', torch.cumprod(1 - linear_betas(beta_1, beta_T, T), 0))

    def class_eps(self, x, abar):
        """B x K x C x H x W: E[eps | x_t, k] for every class k."""
        a = abar.view(-1, 1, 1, 1, 1)
        v = a * self.stds.view(1, -1, 1, 1, 1) ** 2 + 1 - a
        return torch.sqrt(1 - a) * (x[:, None] - torch.sqrt(a) * self.means[None]) / v, v

    def forward(self, x, t, y=None, augm=None):
        x = x.double()
        abar = self.alphas_bar[t]
        eps_k, v = self.class_eps(x, abar)
        a = abar.view(-1, 1, 1, 1, 1)
        # log N(x; sqrt(a) mu_k, v_k I) summed over pixels, up to a constant
        resid = x[:, None] - torch.sqrt(a) * self.means[None]
        log_lik = (-0.5 * resid ** 2 / v - 0.5 * torch.log(v)).flatten(2).sum(-1)
        resp = torch.softmax(log_lik + self.log_priors, dim=1)  # B x K
        eps_uncond = (resp.view(*resp.shape, 1, 1, 1) * eps_k).sum(1)
        if y is None:
            return eps_uncond.float()
        idx = y.clamp(min=0)
        eps_cond = eps_k[torch.arange(x.shape[0]), idx]
        has_label = (y >= 0).view(-1, 1, 1, 1)
        return torch.where(has_label, eps_cond, eps_uncond).float()

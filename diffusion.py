"""Gaussian diffusion: the CBDM training objective and the DDPM / DDIM / fast samplers.

Notation follows Ho et al. (2020): betas (T), alphas = 1 - betas, alphas_bar = cumprod(alphas),
x_t = sqrt(alphas_bar_t) x_0 + sqrt(1 - alphas_bar_t) eps. Time indices t are 0-based (0..T-1).

Models are called as `model(x, t, y=None, augm=None)`; a label entry of -1 means "no label" for
that sample. Guidance and the class-balancing loss use it to run their conditional and
unconditional (or balanced) passes as one batched forward.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samplers import (SOLVER_SPACINGS, ddim_timesteps, make_scheduler, resolve_spacing,
                      respaced_scheduler, set_timesteps, solve, standard_noise)

NO_LABEL = -1
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def extract(v, t, x_shape):
    """Gather v[t] (v: T, t: B) and reshape to B x 1 x 1 x ... for broadcasting over x_shape."""
    out = torch.gather(v, index=t, dim=0).float()
    return out.view([t.shape[0]] + [1] * (len(x_shape) - 1))


def linear_betas(beta_1, beta_T, T):
    """The linear schedule of DDPM, in float64."""
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def autocast(device, amp):
    """torch.autocast for `amp` in {'none', 'bf16', 'fp16'} on `device` (a null context for 'none')."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class GaussianDiffusionTrainer(nn.Module):
    """CBDM training loss.

    Args:
        model: eps-prediction network.
        beta_1, beta_T, T: linear beta schedule.
        num_class: number of classes (needed by `cb`).
        cfg: drop the labels of the whole batch with probability `p_uncond` (classifier-free guidance).
        cb: add the class-balancing regulariser (implies the same label dropout).
        tau: weight of the regulariser.
        weight: target label distribution for y_bal (num_class, sums to 1); the training-set class
            frequencies when training from scratch. Ignored (uniform) when `finetune`.
        finetune: draw y_bal uniformly.
        batched: run the two passes of the regulariser as one batched forward.
    Forward:
        x_0: B x C x H x W in [-1, 1]; y_0: B int64 labels or None; augm: B x 9 or None.
        Returns (loss_ddpm, loss_reg), both B x C x H x W:
        loss_ddpm = (eps_hat - eps)^2; loss_reg = w (h - sg(h_bal))^2 + 0.25 w (sg(h) - h_bal)^2 with
        w = tau t / T (zeros without `cb` or when the batch was made unconditional).
    """

    def __init__(self, model, beta_1, beta_T, T, num_class=None, cfg=False, cb=False, tau=1.0,
                 weight=None, finetune=False, p_uncond=0.1, batched=True):
        super().__init__()
        self.model = model
        self.T = T
        self.num_class = num_class
        self.cfg, self.cb, self.tau = cfg, cb, tau
        self.finetune = finetune
        self.p_uncond = p_uncond
        self.batched = batched
        if cb:
            if num_class is None:
                raise ValueError('cb needs num_class')
            if finetune or weight is None:
                weight = torch.full((num_class,), 1.0 / num_class)
            weight = torch.as_tensor(np.asarray(weight, dtype=np.float64), dtype=torch.float32)
            self.register_buffer('weight', weight / weight.sum())
        betas = linear_betas(beta_1, beta_T, T)
        alphas_bar = torch.cumprod(1. - betas, dim=0)
        self.register_buffer('sqrt_alphas_bar', torch.sqrt(alphas_bar).float())
        self.register_buffer('sqrt_one_minus_alphas_bar', torch.sqrt(1. - alphas_bar).float())

    def q_sample(self, x_0, t, noise):
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (extract(self.sqrt_alphas_bar, t, x_0.shape) * x_0 +
                extract(self.sqrt_one_minus_alphas_bar, t, x_0.shape) * noise)

    def draw_balanced_labels(self, batch_size, device):
        """y_bal ~ Categorical(weight): B int64."""
        return torch.multinomial(self.weight, batch_size, replacement=True).to(device)

    def forward(self, x_0, y_0=None, augm=None):
        t = torch.randint(self.T, size=(x_0.shape[0],), device=x_0.device)
        noise = torch.randn_like(x_0)
        if (self.cfg or self.cb) and torch.rand(()) < self.p_uncond:
            y_0 = None
        x_t = self.q_sample(x_0, t, noise)
        return self.losses(x_t, t, noise, y_0, augm)

    def losses(self, x_t, t, noise, y_0=None, augm=None):
        """The two losses for fixed (x_t, t, eps, y): see the class docstring."""
        if self.cb and y_0 is not None:
            y_bal = self.draw_balanced_labels(x_t.shape[0], x_t.device)
            h, h_bal = self.paired_forward(x_t, t, y_0, y_bal, augm)
            w = (t.float() / self.T * self.tau).view(-1, *([1] * (x_t.dim() - 1)))
            loss_reg = w * (h - h_bal.detach()).pow(2)
            loss_com = w * (h.detach() - h_bal).pow(2)
            loss_reg = loss_reg + 0.25 * loss_com
        else:
            h = self.model(x_t, t, y=y_0, augm=augm)
            loss_reg = torch.zeros_like(h)
        loss_ddpm = F.mse_loss(h.float(), noise, reduction='none')
        return loss_ddpm, loss_reg.float()

    def paired_forward(self, x_t, t, y, y_other, augm=None):
        """model(x_t, t, y) and model(x_t, t, y_other), batched into one forward if `batched`."""
        if not self.batched:
            return (self.model(x_t, t, y=y, augm=augm),
                    self.model(x_t, t, y=y_other, augm=augm))
        augm2 = None if augm is None else torch.cat([augm, augm])
        out = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), y=torch.cat([y, y_other]),
                         augm=augm2)
        return out.chunk(2)


class EMA:
    """Exponential moving average of every floating tensor of the state_dict, in place."""

    def __init__(self, ema_model, model):
        floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        src, dst = model.state_dict(), ema_model.state_dict()
        self.src = [src[k] for k in floats]
        self.dst = [dst[k] for k in floats]

    @torch.no_grad()
    def update(self, decay):
        torch._foreach_lerp_(self.dst, self.src, 1.0 - decay)


class GaussianDiffusionSampler(nn.Module):
    """Ancestral DDPM over all T steps (default), DDIM, DPM-Solver++(2M) (ODE or SDE) or UniPC
    in fewer steps.

    Args:
        model, beta_1, beta_T, T: as for training.
        num_class: labels are drawn uniformly from [0, num_class) when not given.
        img_size: H = W of generated images.
        var_type: 'fixedlarge' (betas, first entry the posterior variance) or 'fixedsmall'
            (the clipped posterior variance); DDPM only.
        sampler: 'ddpm', 'ddim' (ours), 'dpm++2m', 'dpm++2m-sde' or 'unipc' (diffusers'
            schedulers, samplers.py; 'dpm++2m-sde' is diffusers' stochastic sde-dpmsolver++).
        sample_steps: steps of every sampler but DDPM, in [1, T] (default T).
        eta: DDIM stochasticity (0 deterministic, 1 ancestral-like); must be 0 for the diffusers
            solvers (dpm++2m-sde has its own noise).
        skip_type: DDIM step spacing ('quad', 'uniform'), used when `spacing` is 'auto'.
        spacing: step spacing, 'auto' (each sampler's best on the Gaussian oracle) or one of
            samplers.SPACINGS[sampler]: ddim 'quad' / 'uniform'; dpm++2m and dpm++2m-sde
            'default' / 'karras' / 'lu' / 'exponential'; unipc 'default' / 'karras' /
            'exponential'; ddpm only 'auto'.
        batched: evaluate the two guidance passes as one batched forward.
        amp: 'none', 'bf16' or 'fp16' autocast for the network.
        clip_denoised: clip the x0 prediction to [-1, 1] at every step, inside the loop: DDPM
            takes the posterior mean of the clipped x0 (guided-diffusion's p_mean_variance with
            clip_denoised), DDIM re-derives eps from the clipped x0 before its update
            (guided-diffusion's ddim_sample), the diffusers solvers threshold their data
            prediction at 1, which is the same clip (samplers.py says why).
        clip_output: clip the result to the image range [-1, 1] (False for unbounded data, e.g.
            the standardised feature vectors of recognition.feature_diffusion).
    Forward:
        x_T: B x 3 x H x W standard normal, or with start_t the state x_t at time index start_t.
        omega, method: guidance strength, 'cfg' / 'cond' / 'uncond'.
        y: B int64 labels, or None (drawn uniformly; None stays None for 'uncond').
        noise: a samplers.ImageNoise for the batch: every stochastic step draws its noise from
            it, image by image (batch-size independent); None draws from torch's global RNG.
        start_t: SDEdit start, a time index in [0, T): run from start_t down to 0 with the
            schedule of the same sampler on a model of start_t + 1 steps (the first of ours):
            DDPM t = start_t .. 0, DDIM and the solvers their spacing over [0, start_t] in
            sample_steps steps (DDIM: at most start_t + 1). Every full run starts at T - 1, so
            start_t = T - 1 is the full run.
        Returns (x_0, clipped to [-1, 1] unless `clip_output` is False, labels B int64, or None
        for 'uncond' without labels).
    """

    def __init__(self, model, beta_1, beta_T, T, num_class, img_size=32, var_type='fixedlarge',
                 sampler='ddpm', sample_steps=None, eta=0.0, skip_type='quad', batched=True,
                 amp='none', spacing='auto', clip_denoised=False, clip_output=True):
        super().__init__()
        if var_type not in ('fixedlarge', 'fixedsmall'):
            raise ValueError(f'unknown var_type {var_type}')
        if skip_type not in ('quad', 'uniform'):
            raise ValueError(f'unknown skip_type {skip_type}')
        self.spacing = resolve_spacing(sampler, spacing, skip_type)
        self.sample_steps = sample_steps or T
        if sampler != 'ddpm' and not 1 <= self.sample_steps <= T:
            raise ValueError(f'sample_steps must be in [1, {T}], got {self.sample_steps}')
        if sampler in SOLVER_SPACINGS and eta != 0:
            raise ValueError(f'eta applies to ddim only; {sampler} takes eta 0 (dpm++2m and '
                             f'unipc are deterministic, dpm++2m-sde has its own noise)')
        self.model = model
        self.T = T
        self.num_class = num_class
        self.img_size = img_size
        self.var_type = var_type
        self.sampler = sampler
        self.eta = eta
        self.skip_type = self.spacing if sampler == 'ddim' else skip_type
        self.batched = batched
        self.amp = amp
        self.clip_denoised = bool(clip_denoised)
        self.clip_output = clip_output
        # built once: diffusers schedulers are stateful per run but reset by set_timesteps; those
        # of SDEdit starts below T - 1 on first use (scheduler_from)
        self.schedule_betas = linear_betas(beta_1, beta_T, T)  # float64, on the CPU
        self.scheduler = (make_scheduler(sampler, self.schedule_betas, self.spacing,
                                         self.clip_denoised)
                          if sampler in SOLVER_SPACINGS else None)
        self.respaced = {}

        betas = linear_betas(beta_1, beta_T, T)
        alphas = 1. - betas
        alphas_bar = torch.cumprod(alphas, dim=0)
        alphas_bar_prev = F.pad(alphas_bar, [1, 0], value=1)[:T]
        posterior_var = betas * (1. - alphas_bar_prev) / (1. - alphas_bar)
        # the posterior variance is 0 at t = 0: its log is clipped to the value at t = 1 (to
        # beta_1 when T = 1; t = 0 adds no noise, so it only has to be finite)
        var_at_0 = posterior_var[1:2] if T > 1 else betas[:1]
        buffers = {
            'betas': betas,
            'alphas_bar': alphas_bar,
            'sqrt_recip_alphas_bar': torch.sqrt(1. / alphas_bar),
            'sqrt_recipm1_alphas_bar': torch.sqrt(1. / alphas_bar - 1),
            'posterior_var': posterior_var,
            'posterior_log_var_clipped': torch.log(torch.cat([var_at_0, posterior_var[1:]])),
            'posterior_mean_coef1': torch.sqrt(alphas_bar_prev) * betas / (1. - alphas_bar),
            'posterior_mean_coef2': torch.sqrt(alphas) * (1. - alphas_bar_prev) / (1. - alphas_bar),
            'fixedlarge_log_var': torch.log(torch.cat([var_at_0, betas[1:]])),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())

    # --- what a run does --------------------------------------------------------------------
    def timesteps(self, start_t=None):
        """The time indices at which a run (from start_t; None: the full run, from T - 1) calls
        the network, in order (list of ints)."""
        self.check_start(start_t)
        top = self.T - 1 if start_t is None else start_t
        if self.sampler == 'ddpm':
            return list(range(top, -1, -1))
        if self.sampler == 'ddim':
            return ddim_timesteps(top, self.sample_steps, self.skip_type)
        return set_timesteps(self.scheduler_from(top), self.steps_from(top))

    def steps_from(self, top):
        """The steps of a run from time index top: sample_steps, at most top + 1 (the most a
        model of top + 1 steps takes)."""
        return min(self.sample_steps, top + 1)

    def scheduler_from(self, top):
        """The diffusers scheduler of a run from time index top: the full run's at T - 1, else
        one on the first top + 1 betas (samplers.respaced_scheduler), built once."""
        if top == self.T - 1:
            return self.scheduler
        if top not in self.respaced:
            self.respaced[top] = respaced_scheduler(self.sampler, self.schedule_betas,
                                                    self.spacing, self.clip_denoised, top)
        return self.respaced[top]

    def settings(self, method='cfg', omega=0.0, start_t=None):
        """The sampler's settings as a record: sampler, sample_steps (T for ddpm), spacing,
        eta (DDIM's; None for the others), clip_denoised and nfe_per_image, the network
        evaluations per image of a run (its actual steps, zero-length ones dropped, and 2 per
        step when 'cfg' guidance with omega > 0 evaluates the conditional and unconditional
        network, batched or not)."""
        guided = method == 'cfg' and omega > 0
        return {'sampler': self.sampler,
                'sample_steps': self.T if self.sampler == 'ddpm' else self.sample_steps,
                'spacing': self.spacing,
                'eta': float(self.eta) if self.sampler == 'ddim' else None,
                'clip_denoised': self.clip_denoised,
                'nfe_per_image': len(self.timesteps(start_t)) * (2 if guided else 1)}

    def check_start(self, start_t):
        if start_t is not None and not 0 <= start_t < self.T:
            raise ValueError(f'start_t must be a time index in [0, {self.T}), got {start_t}')

    def noise_to(self, x_0, start_t, noise):
        """q_sample: the state at time index start_t of clean images x_0 (B x C x H x W in
        [-1, 1]) with standard normal `noise` (same shape): sqrt(abar) x_0 + sqrt(1 - abar)
        noise. The SDEdit start of forward(..., start_t=start_t)."""
        self.check_start(start_t)
        abar = self.alphas_bar[start_t]
        return torch.sqrt(abar) * x_0 + torch.sqrt(1 - abar) * noise

    # --- the network, with guidance -------------------------------------------------------
    def predict_eps(self, x_t, t, y=None, omega=0.0, method='cfg'):
        """eps for 'uncond' (y ignored), 'cond' (eps(x, y)) and 'cfg'
        ((1 + omega) eps(x, y) - omega eps(x, None)); B x C x H x W float32."""
        with autocast(x_t.device, self.amp):
            if method == 'uncond' or y is None:
                eps = self.model(x_t, t, y=None)
            elif method == 'cond' or omega == 0:
                eps = self.model(x_t, t, y=y)
            elif method == 'cfg':
                eps_cond, eps_uncond = self.guidance_pair(x_t, t, y)
                eps = eps_cond.float() + omega * (eps_cond.float() - eps_uncond.float())
            else:
                raise ValueError(f'unknown sample method {method}')
        return eps.float()

    def guidance_pair(self, x_t, t, y):
        """(eps(x, y), eps(x, no label)), batched into one forward if `batched`."""
        if not self.batched:
            return self.model(x_t, t, y=y), self.model(x_t, t, y=None)
        y_pair = torch.cat([y, torch.full_like(y, NO_LABEL)])
        out = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), y=y_pair)
        return out.chunk(2)

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (extract(self.sqrt_recip_alphas_bar, t, x_t.shape) * x_t -
                extract(self.sqrt_recipm1_alphas_bar, t, x_t.shape) * eps)

    def denoise(self, x_t, t, eps):
        """(x0, eps) that DDPM and DDIM step with: the x0 prediction of eps at (x_t, t), and
        with clip_denoised that x0 clipped to [-1, 1] and the eps that x_t and the clipped x0
        imply (guided-diffusion's _predict_eps_from_xstart). B x C x H x W each."""
        x_0 = self.predict_xstart_from_eps(x_t, t, eps)
        if not self.clip_denoised:
            return x_0, eps
        x_0 = x_0.clamp(-1, 1)
        eps = ((extract(self.sqrt_recip_alphas_bar, t, x_t.shape) * x_t - x_0) /
               extract(self.sqrt_recipm1_alphas_bar, t, x_t.shape))
        return x_0, eps

    # --- DDPM ---------------------------------------------------------------------------
    def q_mean_variance(self, x_0, x_t, t):
        """Mean and log variance of the posterior q(x_{t-1} | x_t, x_0)."""
        posterior_mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x_0 +
                          extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        posterior_log_var = extract(self.posterior_log_var_clipped, t, x_t.shape)
        return posterior_mean, posterior_log_var

    def p_mean_variance(self, x_t, t, y=None, omega=0.0, method='cfg'):
        """Mean and log variance of p(x_{t-1} | x_t): (B x C x H x W, B x 1 x 1 x 1)."""
        log_var_table = (self.fixedlarge_log_var if self.var_type == 'fixedlarge'
                         else self.posterior_log_var_clipped)
        model_log_var = extract(log_var_table, t, x_t.shape)
        eps = self.predict_eps(x_t, t, y, omega, method)
        x_0, _ = self.denoise(x_t, t, eps)
        model_mean, _ = self.q_mean_variance(x_0, x_t, t)
        return model_mean, model_log_var

    def ddpm_step(self, x_t, t, y, omega, method, noise=None, final=False):
        """One ancestral step from time index t (all entries equal) to t - 1; the mean alone at
        the final step (t = 0)."""
        mean, log_var = self.p_mean_variance(x_t, t, y, omega, method)
        if final:
            return mean
        return mean + torch.exp(0.5 * log_var) * standard_noise(noise, x_t)

    # --- DDIM ---------------------------------------------------------------------------
    def ddim_step(self, x_t, t, t_prev, y, omega, method, noise=None):
        """One DDIM update from time index t to t_prev (-1 means the clean image)."""
        eps = self.predict_eps(x_t, t, y, omega, method)
        x_0, eps = self.denoise(x_t, t, eps)
        if t_prev[0] < 0:
            return x_0
        abar = extract(self.alphas_bar, t, x_t.shape)
        abar_prev = extract(self.alphas_bar, t_prev, x_t.shape)
        sigma = self.eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        direction = torch.sqrt((1 - abar_prev - sigma ** 2).clamp(min=0)) * eps
        x_prev = torch.sqrt(abar_prev) * x_0 + direction
        if self.eta > 0:
            x_prev = x_prev + sigma * standard_noise(noise, x_t)
        return x_prev

    # --- the loop -----------------------------------------------------------------------
    def draw_labels(self, batch_size, device):
        return torch.randint(0, self.num_class, (batch_size,), device=device)

    @torch.no_grad()
    def forward(self, x_T, omega=0.0, method='cfg', y=None, noise=None, start_t=None):
        if method not in ('cfg', 'cond', 'uncond'):
            raise ValueError(f'unknown sample method {method}')
        self.check_start(start_t)
        if method != 'uncond' and y is None:
            y = self.draw_labels(x_T.shape[0], x_T.device)
        y_model = None if method == 'uncond' else y
        if self.scheduler is not None:
            top = self.T - 1 if start_t is None else start_t
            x_0 = solve(self.scheduler_from(top), self.steps_from(top), self.predict_eps, x_T,
                        y_model, omega, method, noise)
            return self.output(x_0), y
        steps = self.timesteps(start_t)
        x_t = x_T
        for time_step, prev_step in zip(steps, steps[1:] + [-1]):
            t = x_t.new_full((x_T.shape[0],), time_step, dtype=torch.long)
            if self.sampler == 'ddpm':
                x_t = self.ddpm_step(x_t, t, y_model, omega, method, noise, time_step == 0)
            else:
                t_prev = x_t.new_full((x_T.shape[0],), prev_step, dtype=torch.long)
                x_t = self.ddim_step(x_t, t, t_prev, y_model, omega, method, noise)
        return self.output(x_t), y

    def output(self, x_0):
        """The sampled x_0 as returned: clipped to [-1, 1] with `clip_output`, float32."""
        return torch.clip(x_0, -1, 1) if self.clip_output else x_0.float()

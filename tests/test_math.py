"""Reward, advantage, loss and EMA math (paper eq. 3-5, 7, 8 and Alg. 1 line 15) against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from rlp_trl import EMATeacher, clipped_thought_loss, ema_update_, group_advantages, information_gain
from rlp_trl.teacher import TEACHER_STATE, TEACHER_WEIGHTS


# ---------------------------------------------------------------------------------------------- information gain
def test_information_gain_1d_is_reasoned_minus_baseline():
    reasoned = torch.tensor([-1.0, -2.0, -0.5, -3.25])
    baseline = torch.tensor([-1.5, -1.0, -0.5, -0.25])
    r = information_gain(reasoned, baseline)
    assert r.shape == (4,)
    torch.testing.assert_close(r, torch.tensor([0.5, -1.0, 0.0, -3.0]), rtol=0, atol=0)


def test_information_gain_1d_ignores_discount():
    reasoned, baseline = torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -2.0])
    torch.testing.assert_close(information_gain(reasoned, baseline, discount=0.3), torch.tensor([1.0, -2.0]))


def test_information_gain_horizon_discounted_sum():
    reasoned = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    baseline = torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    # per-token gains [[1, 0, -1], [0.5, 0.5, 0.5]], weights 0.5**j = [1, 0.5, 0.25]
    r = information_gain(reasoned, baseline, discount=0.5)
    assert r.shape == (2,)
    torch.testing.assert_close(r, torch.tensor([1.0 + 0.0 - 0.25, 0.5 + 0.25 + 0.125]))
    # discount 1: plain sum of the per-token gains
    torch.testing.assert_close(information_gain(reasoned, baseline, discount=1.0), torch.tensor([0.0, 1.5]))


def test_information_gain_horizon_one_column_equals_1d():
    reasoned, baseline = torch.tensor([-1.0, -2.0, -0.1]), torch.tensor([-1.5, -1.0, -0.4])
    torch.testing.assert_close(
        information_gain(reasoned[:, None], baseline[:, None], discount=0.5), information_gain(reasoned, baseline)
    )


def test_information_gain_carries_no_gradient():
    reasoned = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    baseline = torch.tensor([[-1.5, -1.0]], requires_grad=True)
    for r in (information_gain(reasoned, baseline, 0.9), information_gain(reasoned[:, 0], baseline[:, 0])):
        assert not r.requires_grad and r.grad_fn is None


def test_information_gain_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        information_gain(torch.zeros(4), torch.zeros(4, 1))


# ---------------------------------------------------------------------------------------------- advantages (eq. 7)
def test_group_advantages_inclusive_mean_correction():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, centred [-2, -1, 0, 3], G/(G-1) = 4/3
    adv = group_advantages(rewards, 4)
    torch.testing.assert_close(adv, torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))


def test_group_advantages_g2_and_no_std_scaling():
    # G = 2: factor 2; the std (here 1.414...) must NOT divide the advantage.
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 3.0]), 2), torch.tensor([-2.0, 2.0]))
    torch.testing.assert_close(group_advantages(torch.tensor([10.0, 30.0]), 2), torch.tensor([-20.0, 20.0]))


def test_group_advantages_groups_are_independent_and_zero_variance_group_is_zero():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0, -1.0, 0.0, 0.0, 1.0])
    adv = group_advantages(rewards, 4)
    torch.testing.assert_close(adv[:4], torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    assert torch.equal(adv[4:8], torch.zeros(4))  # identical rewards: no signal, and no NaN
    torch.testing.assert_close(adv[8:], torch.tensor([-4 / 3, 0.0, 0.0, 4 / 3]))
    torch.testing.assert_close(adv.view(3, 4).sum(1), torch.zeros(3), atol=1e-6, rtol=0)


def test_group_advantages_no_gradient_and_shape():
    rewards = torch.tensor([0.5, -0.5, 2.0, 1.0, 0.0, 3.0], requires_grad=True)
    adv = group_advantages(rewards, 3)
    assert adv.shape == (6,) and not adv.requires_grad


@pytest.mark.parametrize("g", [1, 0])
def test_group_advantages_rejects_g_below_two(g):
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), g)


def test_group_advantages_rejects_non_divisible():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


# ---------------------------------------------------------------------------------------------- clipped loss (eq. 8)
def _loss_inputs():
    """Three thoughts of up to 3 tokens with ratios set through the log-prob differences."""
    ratios = torch.tensor([[1.5, 0.5, 3.0], [1.5, 0.5, 0.9], [2.0, 0.1, 1.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0], [-0.7, -0.2, -1.1]])
    new = old + ratios.log()
    adv = torch.tensor([1.0, -2.0, 5.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])  # row 0: last token masked; row 2: all masked
    return new, old, adv, mask


def test_clipped_loss_hand_values_asymmetric_clip():
    new, old, adv, mask = _loss_inputs()
    eps_low, eps_high = 0.2, 0.28
    # row 0, A=+1: rho 1.5 -> min(1.5, 1.28) = 1.28; rho 0.5 -> min(0.5, 0.8) = 0.5; token 3 masked.
    row0 = -(1.28 + 0.5) / 2
    # row 1, A=-2: rho 1.5 -> min(-3, -2.56) = -3; rho 0.5 -> min(-1, -1.6) = -1.6; rho 0.9 -> -1.8.
    row1 = (3.0 + 1.6 + 1.8) / 3
    # row 2: empty mask -> 0, but it still counts in the mean over N = 3 thoughts.
    expected = (row0 + row1 + 0.0) / 3
    loss = clipped_thought_loss(new, old, adv, mask, eps_low, eps_high)
    assert loss.shape == ()
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_clipped_loss_epsilons_are_not_interchangeable():
    new, old, adv, mask = _loss_inputs()
    # swapped: eps_low = 0.28, eps_high = 0.2
    # row 0: rho 1.5 -> 1.2; rho 0.5 -> min(0.5, 0.72) = 0.5.  row 1: rho 0.5 -> min(-1, -1.44) = -1.44.
    expected = (-(1.2 + 0.5) / 2 + (3.0 + 1.44 + 1.8) / 3) / 3
    loss = clipped_thought_loss(new, old, adv, mask, 0.28, 0.2)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert not math.isclose(loss.item(), clipped_thought_loss(new, old, adv, mask, 0.2, 0.28).item(), rel_tol=1e-3)


def test_clipped_loss_masked_tokens_do_not_change_the_value():
    new, old, adv, mask = _loss_inputs()
    reference = clipped_thought_loss(new, old, adv, mask, 0.2, 0.28)
    garbage = new.clone()
    garbage[mask == 0] += torch.tensor([7.0, -9.0, 3.0, 5.0])  # finite junk on every masked slot
    torch.testing.assert_close(clipped_thought_loss(garbage, old, adv, mask, 0.2, 0.28), reference)


def test_clipped_loss_empty_rows_count_in_the_mean():
    new, old, adv, mask = _loss_inputs()
    full = clipped_thought_loss(new, old, adv, mask, 0.2, 0.28)
    without_empty_row = clipped_thought_loss(new[:2], old[:2], adv[:2], mask[:2], 0.2, 0.28)
    torch.testing.assert_close(full, without_empty_row * 2 / 3)


def test_clipped_loss_gradient_exact_and_zero_on_masked_tokens():
    # ratios inside the clip range, so every thought token gets d/dlogp = -rho * A / (|c| * N)
    ratios = torch.tensor([[1.1, 0.9, 1.0, 1.05], [0.95, 1.0, 1.2, 1.0], [1.0, 1.0, 1.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -0.3], [-3.0, -1.0, -2.0, -1.5], [-0.7, -0.2, -1.1, -0.9]])
    new = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([1.5, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # e.g. thought, then </think> + target / pad
    loss = clipped_thought_loss(new, old, adv, mask, 0.2, 0.28)
    loss.backward()
    n = 3
    lengths = mask.sum(1).clamp(min=1).float()
    expected = -(ratios * adv[:, None]) / (lengths[:, None] * n) * mask
    torch.testing.assert_close(new.grad, expected)
    assert torch.all(new.grad[mask == 0] == 0)
    assert torch.all(new.grad[mask == 1] != 0)


def test_clipped_loss_clipped_tokens_get_no_gradient():
    # A > 0 and rho above 1 + eps_high (or A < 0 and rho below 1 - eps_low): the clipped branch is active.
    old = torch.zeros(2, 1)
    new = torch.tensor([[math.log(1.5)], [math.log(0.5)]], requires_grad=True)
    clipped_thought_loss(new, old, torch.tensor([1.0, -1.0]), torch.ones(2, 1), 0.2, 0.28).backward()
    assert torch.equal(new.grad, torch.zeros(2, 1))


def test_clipped_loss_no_gradient_into_old_logps_or_advantages():
    new, old, adv, mask = _loss_inputs()
    new = new.clone().requires_grad_(True)
    old = old.clone().requires_grad_(True)
    adv = adv.clone().requires_grad_(True)
    clipped_thought_loss(new, old, adv, mask, 0.2, 0.28).backward()
    assert old.grad is None and adv.grad is None and new.grad is not None


def test_clipped_loss_per_token_weights():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.1, 0.9]]))
    weights = torch.tensor([[2.0, 0.5]])
    loss = clipped_thought_loss(new, old, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.2, per_token_weights=weights)
    assert math.isclose(loss.item(), -(1.1 * 2.0 + 0.9 * 0.5) / 2, rel_tol=1e-6)


@pytest.mark.parametrize("eps", [(0.0, 0.2), (0.2, 0.0), (-0.1, 0.2)])
def test_clipped_loss_rejects_non_positive_epsilon(eps):
    new, old, adv, mask = _loss_inputs()
    with pytest.raises(ValueError, match="epsilons must be > 0"):
        clipped_thought_loss(new, old, adv, mask, *eps)


# ---------------------------------------------------------------------------------------------- EMA teacher
def _linear_pair(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(5, 3), nn.Linear(5, 3)


def test_ema_update_moves_exactly_one_minus_tau_of_the_gap():
    teacher, student = _linear_pair()
    phi0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    theta = {k: v.clone() for k, v in student.state_dict().items()}
    ema_update_(teacher, student, 0.9)
    for name, phi in teacher.state_dict().items():
        torch.testing.assert_close(phi, phi0[name] + 0.1 * (theta[name] - phi0[name]), rtol=1e-6, atol=1e-7)
        assert not torch.equal(phi, phi0[name])
    for name, value in student.state_dict().items():  # the student is untouched
        assert torch.equal(value, theta[name])


def test_ema_update_twice_compounds():
    teacher, student = _linear_pair()
    phi0 = teacher.weight.detach().clone()
    theta = student.weight.detach().clone()
    ema_update_(teacher, student, 0.5)
    ema_update_(teacher, student, 0.5)
    torch.testing.assert_close(teacher.weight.detach(), theta + 0.25 * (phi0 - theta))


def test_ema_update_from_other_dtype_student():
    teacher, student = _linear_pair()
    student = student.to(torch.bfloat16)
    phi0 = teacher.weight.detach().clone()
    ema_update_(teacher, student, 0.999)
    assert teacher.weight.dtype == torch.float32
    expected = phi0 + 0.001 * (student.weight.detach().float() - phi0)
    torch.testing.assert_close(teacher.weight.detach(), expected, rtol=1e-6, atol=1e-8)
    assert not torch.equal(teacher.weight.detach(), phi0)  # a float32 teacher resolves a 1e-3 step


def test_ema_update_does_not_build_a_graph():
    teacher, student = _linear_pair()
    ema_update_(teacher, student, 0.9)
    assert teacher.weight.grad_fn is None and teacher.weight.grad is None


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5, -0.1])
def test_ema_update_rejects_tau_outside_open_interval(tau):
    teacher, student = _linear_pair()
    before = teacher.weight.detach().clone()
    with pytest.raises(ValueError, match="decay must be in"):
        ema_update_(teacher, student, tau)
    assert torch.equal(teacher.weight.detach(), before)


def test_ema_update_rejects_mismatched_parameter_names():
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3, bias=False)
    with pytest.raises(ValueError, match="bias"):
        ema_update_(teacher, student, 0.9)


class _TwoParams(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(4))
        self.w = nn.Parameter(torch.zeros(shape))


@pytest.mark.parametrize("teacher_shape, student_shape", [((2, 3), (3,)), ((3,), (2, 3)), ((2, 3), (3, 2))])
def test_ema_update_rejects_shape_mismatch_without_partial_update(teacher_shape, student_shape):
    """Same names, different shapes (including shapes that would silently broadcast, [3] into [2, 3]): an error,
    and no parameter of the teacher is touched."""
    teacher, student = _TwoParams(teacher_shape), _TwoParams(student_shape)
    with torch.no_grad():
        student.a.fill_(1.0)
        student.w.fill_(1.0)
    with pytest.raises((ValueError, RuntimeError)):
        ema_update_(teacher, student, 0.5)
    assert torch.equal(teacher.a.detach(), torch.zeros(4))
    assert torch.equal(teacher.w.detach(), torch.zeros(teacher_shape))


def test_ema_teacher_lazy_init_float32_frozen_copy():
    _, student = _linear_pair()
    student = student.to(torch.bfloat16)
    teacher = EMATeacher(0.99)
    assert not teacher.initialized
    teacher.init_from(student)
    assert teacher.initialized and teacher.module is not student
    for (name, phi), (_, theta) in zip(teacher.module.named_parameters(), student.named_parameters()):
        assert phi.dtype == torch.float32 and not phi.requires_grad
        assert torch.equal(phi, theta.detach().float()), name
    assert not teacher.module.training
    assert student.weight.dtype == torch.bfloat16 and student.weight.requires_grad  # the student is untouched
    teacher.update(student)
    assert teacher.num_updates == 1


def test_ema_teacher_auto_dtype_keeps_model_dtype():
    _, student = _linear_pair()
    teacher = EMATeacher(0.99, dtype=None)
    teacher.init_from(student.to(torch.float64))
    assert teacher.module.weight.dtype == torch.float64


def test_ema_teacher_save_load_roundtrip(tmp_path):
    base, student = _linear_pair()
    teacher = EMATeacher(0.9)
    teacher.save(str(tmp_path))  # not initialised: writes nothing
    assert not (tmp_path / TEACHER_WEIGHTS).exists()
    assert EMATeacher(0.9).load(str(tmp_path), base) is False

    teacher.init_from(base)
    teacher.update(student)
    teacher.update(student)
    teacher.save(str(tmp_path))
    assert (tmp_path / TEACHER_WEIGHTS).is_file() and (tmp_path / TEACHER_STATE).is_file()

    restored = EMATeacher(0.9)
    assert restored.load(str(tmp_path), student) is True  # loads into a copy of any same-architecture model
    assert restored.num_updates == 2
    for (name, a), (_, b) in zip(teacher.module.named_parameters(), restored.module.named_parameters()):
        assert torch.equal(a, b), name
        assert not b.requires_grad

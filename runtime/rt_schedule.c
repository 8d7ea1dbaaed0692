/*
 * rt_schedule.c — the learning-rate schedule: the learning rate of every epoch, computed by the
 * driver in double and written into the hyper-parameter "lr" before the epoch's first step.
 *
 * The schedule counts epochs, as torch.optim.lr_scheduler does when scheduler.step() is called
 * once per epoch; a model whose data is in the file takes one full-batch step per epoch. The
 * learning rate is a pure function of the epoch (closed forms), so a resumed run, which knows its
 * epoch from the checkpoint, sets the same values as a run that was never interrupted.
 *
 * With epoch t from 0, base the model's lr (or --lr) and W the warm-up:
 *   t < W        base·(t+1)/W                      LinearLR(start_factor=1/W, total_iters=W−1)
 *   then, u = t − W:
 *   constant     base
 *   step         base·γ^⌊u/step_size⌋              StepLR(step_size, gamma)
 *   exponential  base·γ^u                           ExponentialLR(gamma)
 *   cosine       η + (base − η)·(1 + cos(π·u/T))/2  CosineAnnealingLR(T_max=T, eta_min=η)
 * Warm-up then a schedule is SequentialLR([LinearLR(...), S], milestones=[W]): the schedule
 * starts at u = 0 when the warm-up ends. Step, exponential and cosine are torch's closed forms
 * (_get_closed_form_lr) in the same order of operations, LinearLR's simplified; torch's step()
 * computes the same values recursively (cosine: (1 + cos(π·u/T)) / (1 + cos(π·(u−1)/T)) ·
 * (lr − η) + η, warm-up: lr·(t+1)/t), which agrees to rounding.
 */
#include <math.h>
#include <stdlib.h>

#include "runtime.h"

static const double pi = 3.14159265358979323846;

/* Setting `key` as a double, dflt when absent (rt_check_program has checked it is a number). */
static double setting_double(const kiln_program *p, const char *key, double dflt) {
  const char *v = rt_setting(p, key);
  return v && *v ? strtod(v, NULL) : dflt;
}

int rt_schedule_of(const kiln_program *p, RtSchedule *s, char *err) {
  *s = (RtSchedule){.kind = (int)rt_setting_int(p, "lr_schedule", KILN_LR_CONSTANT),
                    .step_size = rt_setting_int(p, "lr_step_size", 1),
                    .gamma = setting_double(p, "lr_gamma", 0.1),
                    .t_max = rt_setting_int(p, "lr_t_max", 1),
                    .eta_min = setting_double(p, "lr_eta_min", 0),
                    .warmup = rt_setting_int(p, "lr_warmup", 0)};
  if (s->kind < KILN_LR_CONSTANT || s->kind > KILN_LR_COSINE)
    return rt_errf(err, "the program's learning-rate schedule %d is not one this trainer knows",
                   s->kind);
  if (s->step_size < 1 || s->t_max < 1 || s->warmup < 0 || !(s->gamma > 0) ||
      !(s->eta_min >= 0))
    return rt_errf(err, "the program's learning-rate schedule has a value out of range");
  return 0;
}

int rt_schedule_active(const RtSchedule *s) {
  return s->kind != KILN_LR_CONSTANT || s->warmup > 0;
}

double rt_schedule_lr(const RtSchedule *s, double base, int64_t epoch) {
  if (epoch < s->warmup)
    return base * (double)(epoch + 1) / (double)s->warmup;
  int64_t u = epoch - s->warmup;
  switch (s->kind) {
  case KILN_LR_STEP:
    return base * pow(s->gamma, (double)(u / s->step_size));
  case KILN_LR_EXPONENTIAL:
    return base * pow(s->gamma, (double)u);
  case KILN_LR_COSINE:
    return s->eta_min + (base - s->eta_min) * (1 + cos(pi * (double)u / (double)s->t_max)) / 2;
  default:
    return base;
  }
}

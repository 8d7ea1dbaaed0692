/*
 * rt_rng.c — reproducible random numbers for initialisation and shuffling.
 *
 * xoshiro256** (Blackman and Vigna) seeded through splitmix64, as the authors recommend, so that
 * nearby seeds (0, 1, 2, ...) still give unrelated streams. Everything is integer arithmetic on
 * uint64_t plus a fixed conversion to double, so a seed gives the same numbers on every machine
 * and compiler; that is what makes a trainer's run repeatable and lets the reference runtime and
 * a compiled trainer start from bit-identical parameters.
 */
#include <math.h>

#include "runtime.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void rt_rng_seed(RtRng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&x);
  /* splitmix64 is a bijection of its counter, so four outputs are never all zero (the one state
   * xoshiro cannot leave); nothing to patch up. */
}

uint64_t rt_rng_next(RtRng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

/* The top 53 bits, scaled: every double in [0, 1) on the 2^-53 grid is equally likely. */
double rt_rng_uniform(RtRng *r) { return (double)(rt_rng_next(r) >> 11) * 0x1.0p-53; }

/* Box-Muller without a cached second value: RtRng is just the generator state, so a copy of it
 * replays exactly, and one normal always costs two uniforms. 1 - u keeps the log's argument in
 * (0, 1]. */
double rt_rng_normal(RtRng *r) {
  double u1 = 1.0 - rt_rng_uniform(r);
  double u2 = rt_rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Rejection on the low end: of the 2^64 outputs, the first (2^64 mod n) would make some residues
 * one more likely than others, so they are drawn again. */
uint64_t rt_rng_below(RtRng *r, uint64_t n) {
  if (n <= 1)
    return 0;
  uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
  for (;;) {
    uint64_t x = rt_rng_next(r);
    if (x >= threshold)
      return x % n;
  }
}

void rt_shuffle(RtRng *r, int64_t *idx, int64_t n) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)rt_rng_below(r, (uint64_t)i + 1);
    int64_t t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}

/* FNV-1a over the name, then both the hash and the seed go through splitmix64's finaliser so
 * that "fc1.weight" under seed 1 and seed 2 are unrelated, not a shifted copy of each other. */
uint64_t rt_hash_name(uint64_t seed, const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)(name ? name : ""); *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ULL;
  }
  uint64_t x = seed;
  uint64_t mixed_seed = splitmix64(&x);
  x = h ^ mixed_seed;
  return splitmix64(&x);
}

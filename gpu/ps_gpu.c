/* ps_gpu: backend registry and selection by device name. */
#include "ps_gpu.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const act_names[PS_GPU_NACTS] = {"none", "relu", "sigmoid", "tanh"};

/* ps_gpu_act_name returns the static name of ACT ("?" when out of range). */
const char *ps_gpu_act_name(ps_gpu_act act) {
  return (unsigned)act < PS_GPU_NACTS ? act_names[act] : "?";
}

/* ps_gpu_act_parse maps NAME to *ACT; 0 or PS_EINVAL. */
int ps_gpu_act_parse(const char *name, ps_gpu_act *act) {
  for (int i = 0; i < PS_GPU_NACTS; i++)
    if (name && strcmp(name, act_names[i]) == 0) {
      *act = (ps_gpu_act)i;
      return 0;
    }
  return PS_EINVAL;
}

/* cuda_open opens CUDA device ORDINAL when this build has the cuda backend;
 * otherwise fails with PS_EDEVICE saying so. */
static int cuda_open(int ordinal, ps_gpu_backend **be, ps_errbuf *eb) {
#if defined(PS_HAVE_CUDA) && defined(PS_HAVE_CUDA_BACKEND)
  return ps_gpu_cuda_open(ordinal, be, eb);
#else
  (void)be;
  return ps_errf(eb, PS_EDEVICE, "device 'cuda:%d': this build has no cuda backend", ordinal);
#endif
}

/* ps_gpu_device_parse: see ps_gpu.h. */
int ps_gpu_device_parse(const char *device, int *ordinal, ps_errbuf *eb) {
  return ps_device_parse(device, ordinal, eb);
}

/* ps_gpu_open: see ps_gpu.h.  "auto" falls back to the CPU when CUDA is
 * missing or has no device (and says nothing: that is the normal case). */
int ps_gpu_open(const char *device, ps_gpu_backend **be, ps_errbuf *eb) {
  *be = NULL;
  int ord, err = ps_gpu_device_parse(device, &ord, eb);
  if (err < 0) return err;
  if (!device || strcmp(device, "auto") == 0) {
    ps_errbuf ignored;
    if (cuda_open(0, be, &ignored) == 0) return 0;
    return ps_gpu_cpu_open(1, be, eb);
  }
  if (ord < 0) return ps_gpu_cpu_open(1, be, eb);
  return cuda_open(ord, be, eb);
}

/* ps_gpu_close releases BE through its own table. */
void ps_gpu_close(ps_gpu_backend *be) {
  if (be) be->ops->close(be);
}

/* offsets_ok: OFF[0..n] starts at 0, never decreases and ends at NNZ. */
static int offsets_ok(const int32_t *off, uint32_t n, uint32_t nnz) {
  if (!off || off[0] != 0 || (uint32_t)off[n] != nnz) return 0;
  for (uint32_t i = 0; i < n; i++)
    if (off[i + 1] < off[i]) return 0;
  return 1;
}

/* ps_gpu_bags_check: see ps_gpu.h.  The transpose is checked by counting:
 * walking the bags in order, each (bag, slot) pair must be the next
 * unread entry of its slot's list, which holds exactly when row_bag lists
 * every occurrence in increasing bag order. */
int ps_gpu_bags_check(const ps_gpu_bags *g) {
  if (!g || g->nnz > INT32_MAX || g->nbags > INT32_MAX || g->nrows > INT32_MAX) return PS_EINVAL;
  if (!offsets_ok(g->bag_off, g->nbags, g->nnz) || !offsets_ok(g->row_off, g->nrows, g->nnz))
    return PS_EINVAL;
  if (g->nnz && (!g->bag_slot || !g->row_bag)) return PS_EINVAL;
  int32_t *next = malloc(((size_t)g->nrows + 1) * sizeof *next);
  if (!next) return PS_ENOMEM;
  memcpy(next, g->row_off, (size_t)g->nrows * sizeof *next);
  int rc = 0;
  for (uint32_t b = 0; b < g->nbags && !rc; b++)
    for (int32_t k = g->bag_off[b]; k < g->bag_off[b + 1] && !rc; k++) {
      int32_t r = g->bag_slot[k];
      if (r < 0 || (uint32_t)r >= g->nrows || next[r] >= g->row_off[r + 1] ||
          g->row_bag[next[r]] != (int32_t)b)
        rc = PS_EINVAL;
      else
        next[r]++;
    }
  free(next);
  return rc;
}

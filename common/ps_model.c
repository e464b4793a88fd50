/* ps_model: chunk layouts of models. */
#include "ps_model.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_pb.h"
#include "ps_place.h"

static const char *const ps_consistency_names[] = {[PS_ASP] = "asp", [PS_BSP] = "bsp",
                                                   [PS_SSP] = "ssp"};
static const char *const ps_stale_weight_names[] = {[PS_WEIGHT_NONE] = "none",
                                                    [PS_WEIGHT_INVERSE] = "inverse"};

/* ps_enum_parse finds S ("" or NULL: entry 0) in NAMES[0..N). */
static int ps_enum_parse(const char *s, const char *const *names, int n) {
  if (!s || !*s) return 0;
  for (int i = 0; i < n; i++)
    if (!strcmp(s, names[i])) return i;
  return -1;
}

int ps_consistency_parse(const char *model, const char *s, ps_consistency *out, ps_errbuf *eb) {
  int i = ps_enum_parse(s, ps_consistency_names, 3);
  if (i < 0)
    return ps_errf(eb, PS_EINVAL, "model '%s': unknown consistency '%s' (bsp, ssp or asp)", model, s);
  *out = (ps_consistency)i;
  return 0;
}

int ps_stale_weight_parse(const char *model, const char *s, ps_stale_weight *out, ps_errbuf *eb) {
  int i = ps_enum_parse(s, ps_stale_weight_names, 2);
  if (i < 0)
    return ps_errf(eb, PS_EINVAL, "model '%s': unknown staleness_weight '%s' (none or inverse)",
                   model, s);
  *out = (ps_stale_weight)i;
  return 0;
}

const char *ps_consistency_name(ps_consistency c) {
  return (unsigned)c < 3 ? ps_consistency_names[c] : "unknown";
}

/* name_cmp orders tensor specs by name (qsort). */
static int name_cmp(const void *a, const void *b) {
  return strcmp((*(const Ps__TensorSpec *const *)a)->name, (*(const Ps__TensorSpec *const *)b)->name);
}

/* ps_layout_unique refuses SPEC when two tensors share a name (sorted:
 * a spec of many tensors is checked in N log N). */
static int ps_layout_unique(const Ps__ModelSpec *spec, ps_errbuf *eb) {
  const Ps__TensorSpec **by = malloc(spec->n_tensors * sizeof *by);
  if (!by) return ps_errf(eb, PS_ENOMEM, "out of memory");
  for (size_t t = 0; t < spec->n_tensors; t++) {
    by[t] = spec->tensors[t];
    if (!by[t]->name || !by[t]->name[0]) {
      free(by);
      return ps_errf(eb, PS_EINVAL, "model '%s': tensor %zu has no name", spec->name, t);
    }
  }
  qsort(by, spec->n_tensors, sizeof *by, name_cmp);
  int rc = 0;
  for (size_t t = 1; t < spec->n_tensors && !rc; t++)
    if (strcmp(by[t - 1]->name, by[t]->name) == 0)
      rc = ps_errf(eb, PS_EINVAL, "model '%s': duplicate tensor '%s'", spec->name, by[t]->name);
  free(by);
  return rc;
}

int ps_layout_build(ps_layout *l, const Ps__ModelSpec *spec, uint32_t chunk_elems,
                    const uint32_t *shard_ids, size_t nshards, ps_errbuf *eb) {
  memset(l, 0, sizeof *l);
  if (ps_name_check("model", spec->name, eb) < 0) return PS_EINVAL;
  if (spec->n_tensors == 0)
    return ps_errf(eb, PS_EINVAL, "model '%s' has no tensors", spec->name);
  if (nshards == 0) return ps_errf(eb, PS_EINVAL, "no shards");
  l->chunk_elems = spec->chunk_elems ? spec->chunk_elems : chunk_elems;
  if (l->chunk_elems == 0) return ps_errf(eb, PS_EINVAL, "chunk_elems is 0");
  int rc = ps_consistency_parse(spec->name, spec->consistency, &l->consistency, eb);
  if (rc == 0) rc = ps_stale_weight_parse(spec->name, spec->staleness_weight, &l->stale_weight, eb);
  if (rc == 0) rc = ps_codec_parse(spec->codec, "codec", &l->push_codec, eb);
  if (rc < 0) return rc;
  l->push_wire = l->push_codec;
  if (ps_codec_parse(spec->pull_codec, "pull codec", &l->pull_codec, eb) < 0 ||
      l->pull_codec > PS_CODEC_INT8)
    return ps_errf(eb, PS_EINVAL, "model '%s': pull codec '%s' is not one of fp32, fp16, int8",
                   spec->name, spec->pull_codec);
  if (!isfinite(spec->topk) || spec->topk < 0 || spec->topk > 1)
    return ps_errf(eb, PS_EINVAL, "model '%s': topk %g is not a fraction in (0, 1]", spec->name,
                   (double)spec->topk);
  l->topk = spec->topk > 0 ? spec->topk : PS_CODEC_TOPK_DEFAULT;
  l->codec_warmup = spec->codec_warmup_steps;
  l->codec_min_elems = spec->codec_min_elems ? spec->codec_min_elems : 1024;
  l->ntensors = spec->n_tensors;
  if ((rc = ps_layout_unique(spec, eb)) < 0) return rc;
  l->tensors = calloc(l->ntensors, sizeof *l->tensors);
  if (!l->tensors) return ps_errf(eb, PS_ENOMEM, "out of memory");
  uint64_t nchunks = 0;
  for (size_t t = 0; t < spec->n_tensors; t++) {
    const Ps__TensorSpec *ts = spec->tensors[t];
    ps_tensor_info *ti = &l->tensors[t];
    if (ts->n_shape == 0) {
      ps_layout_release(l);
      return ps_errf(eb, PS_EINVAL, "tensor '%s' has no shape", ts->name);
    }
    uint64_t n = 1;
    for (size_t d = 0; d < ts->n_shape; d++) {
      if (ts->shape[d] == 0 || n > (UINT64_C(1) << 40) / ts->shape[d]) {
        ps_layout_release(l);
        return ps_errf(eb, PS_EINVAL, "tensor '%s': bad dimension %zu", ts->name, d);
      }
      n *= ts->shape[d];
    }
    const char *init = ts->init && ts->init[0] ? ts->init : "zeros";
    if (!ps_init_known(init)) {
      ps_layout_release(l);
      return ps_errf(eb, PS_EINVAL, "tensor '%s': unknown initializer '%s'", ts->name, init);
    }
    /* Initial values must be finite: |scale| * 8.5 (the largest normal
     * deviate the initializers draw) stays far below FLT_MAX. */
    if (!isfinite(ts->scale) || fabsf(ts->scale) > 1e30f) {
      ps_layout_release(l);
      return ps_errf(eb, PS_EINVAL, "tensor '%s': initializer scale %g is not a finite number up to 1e30",
                     ts->name, (double)ts->scale);
    }
    ps_codec_id tc = l->push_codec;
    if (ts->codec && *ts->codec && ps_codec_parse(ts->codec, "tensor codec", &tc, eb) < 0) {
      ps_layout_release(l);
      return PS_EINVAL;
    }
    int small = n < l->codec_min_elems;
    /* under an fp32 model, only the tensors with a codec of their own
     * are compressed (push_wire names another codec then) */
    ti->push_codec = ts->codec && *ts->codec                     ? tc
                     : small || l->push_codec == PS_CODEC_FP32 ? PS_CODEC_FP32
                                                               : PS_CODEC_N;
    if (l->push_wire == PS_CODEC_FP32 && ti->push_codec != PS_CODEC_N)
      l->push_wire = ti->push_codec;
    ti->pull_codec = small ? PS_CODEC_FP32 : PS_CODEC_N;
    ti->name = ts->name;
    ti->nelems = n;
    ti->model_offset = l->nparams;
    ti->first_chunk = (uint32_t)nchunks;
    ti->nchunks = (uint32_t)((n + l->chunk_elems - 1) / l->chunk_elems);
    ti->fan_in = ts->shape[0];
    ti->fan_out = ts->n_shape > 1 ? n / ts->shape[0] : 1;
    l->nparams += n;
    nchunks += ti->nchunks;
    if (nchunks >= UINT32_MAX) {
      ps_layout_release(l);
      return ps_errf(eb, PS_EINVAL, "model '%s' has too many chunks", spec->name);
    }
  }
  l->nchunks = (size_t)nchunks;
  l->chunks = calloc(l->nchunks, sizeof *l->chunks);
  if (!l->chunks) {
    ps_layout_release(l);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  for (size_t t = 0; t < l->ntensors; t++) {
    const ps_tensor_info *ti = &l->tensors[t];
    for (uint32_t i = 0; i < ti->nchunks; i++) {
      ps_chunk *c = &l->chunks[ti->first_chunk + i];
      c->tensor = (uint32_t)t;
      c->index = i;
      c->offset = (uint64_t)i * l->chunk_elems;
      uint64_t rest = ti->nelems - c->offset;
      c->len = (uint32_t)(rest < l->chunk_elems ? rest : l->chunk_elems);
      c->shard = (uint32_t)ps_place_chunk(spec->name, (uint32_t)t, i, shard_ids, nshards);
    }
  }
  return 0;
}

void ps_layout_release(ps_layout *l) {
  free(l->tensors);
  free(l->chunks);
  memset(l, 0, sizeof *l);
}

ps_codec_id ps_layout_chunk_codec(const ps_layout *l, uint32_t id, ps_codec_id c, int push) {
  if (c == PS_CODEC_FP32) return c;
  const ps_tensor_info *ti = &l->tensors[l->chunks[id].tensor];
  ps_codec_id t = push ? ti->push_codec : ti->pull_codec;
  return t == PS_CODEC_N ? c : t;
}

uint64_t ps_layout_payload_bytes(const ps_layout *l, const uint32_t *ids, size_t n,
                                 ps_codec_id c, int push) {
  uint64_t b = 0;
  for (size_t i = 0; i < n; i++)
    b += ps_codec_size(ps_layout_chunk_codec(l, ids[i], c, push), l->chunks[ids[i]].len, l->topk);
  return b;
}

long ps_layout_shard_chunks(const ps_layout *l, uint32_t shard, uint32_t **ids,
                            uint64_t *nelems) {
  size_t n = 0;
  uint64_t e = 0;
  for (size_t c = 0; c < l->nchunks; c++)
    if (l->chunks[c].shard == shard) n++;
  *ids = malloc((n ? n : 1) * sizeof **ids);
  if (!*ids) return PS_ENOMEM;
  n = 0;
  for (size_t c = 0; c < l->nchunks; c++)
    if (l->chunks[c].shard == shard) {
      (*ids)[n++] = (uint32_t)c;
      e += l->chunks[c].len;
    }
  if (nelems) *nelems = e;
  return (long)n;
}

long ps_layout_place(const ps_layout *l, uint32_t shard, const uint32_t *ids, size_t n,
                     const void *values, size_t len, float *out, int32_t *from, ps_errbuf *eb) {
  uint64_t total = 0;
  for (size_t k = 0; k < n; k++) {
    const char *why = NULL;
    if (ids[k] >= l->nchunks) why = "which the model does not have";
    else if (from && from[ids[k]] >= 0) why = "a second time";
    else if (l->chunks[ids[k]].shard != shard)
      why = "which placement puts on another shard (does the config list the cluster's shards?)";
    if (why) return ps_errf(eb, PS_EPROTO, "sent chunk %" PRIu32 " %s", ids[k], why);
    if (from) from[ids[k]] = (int32_t)shard;
    total += l->chunks[ids[k]].len;
  }
  if (len != total * sizeof(float))
    return ps_errf(eb, PS_EPROTO, "sent %zu value bytes for chunks of %" PRIu64 " elements", len,
                   total);
  const float *v = values;
  for (size_t k = 0; k < n; k++) {
    const ps_chunk *ch = &l->chunks[ids[k]];
    memcpy(out + l->tensors[ch->tensor].model_offset + ch->offset, v, ch->len * sizeof(float));
    v += ch->len;
  }
  return (long)total;
}

int ps_modelspec_check(const Ps__ModelSpec *spec, ps_errbuf *eb) {
  static const char *const kinds[] = {"sgd", "momentum", "nesterov", "adam", "adagrad"};
  int err;
  for (size_t t = 0; t < spec->n_tensors; t++)
    if ((err = ps_text_check("tensor name", spec->tensors[t]->name, 255, eb)) < 0) return err;
  if (!isfinite(spec->clip_norm) || spec->clip_norm < 0)
    return ps_errf(eb, PS_EINVAL, "model '%s': clip_norm %g is not a finite number >= 0",
                   spec->name, (double)spec->clip_norm);
  const Ps__OptimizerSpec *o = spec->optimizer;
  if (!o) return ps_errf(eb, PS_EINVAL, "model '%s' has no optimizer", spec->name);
  int known = 0;
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (o->kind && strcmp(o->kind, kinds[i]) == 0) known = 1;
  if (!known)
    return ps_errf(eb, PS_EINVAL, "unknown optimizer '%s'", o->kind ? o->kind : "");
  if (!(o->lr > 0) || !isfinite(o->lr))
    return ps_errf(eb, PS_EINVAL, "optimizer lr must be a finite number > 0");
  float vals[] = {o->momentum, o->beta1, o->beta2, o->eps, o->weight_decay};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
    if (!isfinite(vals[i]) || vals[i] < 0)
      return ps_errf(eb, PS_EINVAL, "optimizer settings must be finite and >= 0");
  if (!isfinite(o->lr_decay) || o->lr_decay < 0 || o->lr_decay > 1)
    return ps_errf(eb, PS_EINVAL, "optimizer lr_decay must lie in [0, 1]");
  if (o->lr_decay > 0 && o->lr_decay < 1 && !o->lr_decay_steps)
    return ps_errf(eb, PS_EINVAL, "optimizer lr_decay needs lr_decay_steps > 0");
  if (o->momentum >= 1 || o->beta1 >= 1 || o->beta2 >= 1)
    return ps_errf(eb, PS_EINVAL, "momentum, beta1 and beta2 must be < 1");
  return 0;
}

typedef struct node_name {
  const char *name;
  size_t i;
} node_name;

/* node_name_cmp orders by name, then by node index. */
static int node_name_cmp(const void *a, const void *b) {
  const node_name *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* ps_graph_node_names_check: see ps_model.h. */
int ps_graph_node_names_check(const Ps__Graph__Graph *g, ps_errbuf *eb) {
  if (g->n_nodes < 2) return 0;
  node_name *v = malloc(g->n_nodes * sizeof *v); /* sorted: linear after n log n */
  if (!v) return ps_errf(eb, PS_ENOMEM, "out of memory");
  size_t n = 0;
  for (size_t i = 0; i < g->n_nodes; i++)
    if (g->nodes[i]->name && *g->nodes[i]->name) v[n++] = (node_name){g->nodes[i]->name, i};
  qsort(v, n, sizeof *v, node_name_cmp);
  size_t k = 1; /* the first two nodes of the (by name) first name taken twice */
  while (k < n && strcmp(v[k - 1].name, v[k].name) != 0) k++;
  size_t a = k < n ? v[k - 1].i : 0, b = k < n ? v[k].i : 0;
  free(v);
  if (k >= n) return 0;
  ps_errbuf scratch;
  const char *name = g->nodes[a]->name;
  if (ps_text_check("node name", name, 255, &scratch) < 0)
    return ps_errf(eb, PS_EINVAL, "nodes[%zu] and nodes[%zu] have the same name", a, b);
  return ps_errf(eb, PS_EINVAL, "two nodes are named '%s' (nodes[%zu] and nodes[%zu]): node "
                 "names must be unique", name, a, b);
}

/* ps_modelspec_graph_check: see ps_model.h. */
int ps_modelspec_graph_check(const Ps__ModelSpec *spec, ps_errbuf *eb) {
  if (!spec->graph.len) return 0;
  Ps__Graph__Graph *g = ps__graph__graph__unpack(NULL, spec->graph.len, spec->graph.data);
  if (!g) return 0; /* not this check's to refuse: the workers' loader says what is wrong */
  int rc = ps_graph_node_names_check(g, eb);
  ps__graph__graph__free_unpacked(g, NULL);
  if (rc < 0) {
    ps_errbuf inner = *eb;
    ps_errf(eb, rc, "model '%s': graph: %s", spec->name, inner.msg);
  }
  return rc;
}

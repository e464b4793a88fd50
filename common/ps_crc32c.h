/* ps_crc32c: CRC-32C (Castagnoli, the iSCSI / ext4 / RocksDB checksum),
 * with the SSE4.2 crc32 instruction on three interleaved streams where
 * the CPU has it (checked at run time) and a portable slicing-by-8 table
 * version everywhere else; both give the same value.
 *
 * Chaining as zlib's crc32: ps_crc32c(ps_crc32c(0, a, n), b, m) is the
 * checksum of a followed by b; ps_crc32c(0, "123456789", 9) == 0xe3069283. */
#ifndef PS_CRC32C_H
#define PS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* ps_crc32c extends CRC (0 to start) by N bytes at P: the fastest
 * version this CPU runs. */
uint32_t ps_crc32c(uint32_t crc, const void *p, size_t n);

/* ps_crc32c_sw: the portable version (tests compare the two). */
uint32_t ps_crc32c_sw(uint32_t crc, const void *p, size_t n);

/* ps_crc32c_hw: 1 when ps_crc32c uses the SSE4.2 instruction. */
int ps_crc32c_hw(void);

#endif

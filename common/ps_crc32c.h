/* ps_crc32c: CRC-32C (Castagnoli, the iSCSI / ext4 / RocksDB checksum),
 * with the SSE4.2 crc32 instruction on three interleaved streams where
 * the CPU has it, carry-less multiplication (VPCLMULQDQ) on AVX-512
 * registers for 256 bytes and more where it has those too (both checked
 * at run time), and a portable slicing-by-8 table version everywhere
 * else; all give the same value.
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

/* ps_crc32c_combine: the checksum of a followed by b from CRC1 (of a),
 * CRC2 (of b) and LEN2 (b's length), as zlib's crc32_combine: in
 * O(log LEN2) steps, without b's bytes.  So the checksum of any range of
 * a buffer follows from the checksums of its prefixes:
 * crc(b) = crc(a b) ^ ps_crc32c_combine(crc(a), 0, len(b)). */
uint32_t ps_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

/* ps_crc32c_sw: the portable version (tests compare the others to it). */
uint32_t ps_crc32c_sw(uint32_t crc, const void *p, size_t n);

/* ps_crc32c_hw: the fastest version this CPU runs: 0 the portable one,
 * 1 the SSE4.2 instruction, 2 that and AVX-512 VPCLMULQDQ folding. */
int ps_crc32c_hw(void);

/* ps_crc32c_level: ps_crc32c with the version LEVEL (as ps_crc32c_hw
 * counts them), or the fastest this CPU runs where that is lower; so
 * tests check every version the CPU has. */
uint32_t ps_crc32c_level(int level, uint32_t crc, const void *p, size_t n);

#endif

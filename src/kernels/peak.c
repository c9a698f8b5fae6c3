/* The machine's fp32 peak, for MFU (kernels.h). A short table of CPUs measured or specified, else an estimate
 * from /proc/cpuinfo: FMA width from the ISA flags times the listed clock. */
#include "dfm/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double kernels_peak_gflops_per_thread(char *desc, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[4096], vendor[64] = "", name[256] = "";
    int family = -1, model = -1, avx512 = 0, avx2 = 0, fma = 0;
    double mhz = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon) {
            if (family >= 0) break; /* the first processor's block is enough */
            continue;
        }
        const char *v = colon + 1 + (colon[1] == ' ');
        if (!strncmp(line, "vendor_id", 9))
            sscanf(v, "%63s", vendor);
        else if (!strncmp(line, "cpu family", 10))
            family = atoi(v);
        else if (!strncmp(line, "model name", 10)) {
            snprintf(name, sizeof name, "%s", v);
            name[strcspn(name, "\n")] = 0;
        } else if (!strncmp(line, "model", 5) && (line[5] == ' ' || line[5] == '\t'))
            model = atoi(v);
        else if (!strncmp(line, "cpu MHz", 7))
            mhz = atof(v);
        else if (!strncmp(line, "flags", 5)) {
            avx512 = strstr(v, " avx512f") != NULL;
            avx2 = strstr(v, " avx2") != NULL;
            fma = strstr(v, " fma") != NULL;
        }
    }
    if (f) fclose(f);
    int amd = !strcmp(vendor, "AuthenticAMD");
    /* measured here (REFERENCE.md §7): Zen 4 "Genoa", family 25 model 17: about 115 GFLOP/s fp32 per core
     * (two 256-bit FMA pipes, 512-bit ops double-pumped, ~3.6 GHz under load) */
    if (amd && family == 25 && model >= 16 && model <= 31) {
        snprintf(desc, n, "%s (AMD family 25 model %d, Zen 4): 115 GFLOP/s fp32 per core, measured", name, model);
        return 115.0;
    }
    /* otherwise flops per cycle from the ISA: 2 FMA pipes x lanes x 2 (Zen 4 and older AMD run 512-bit ops on
     * 256-bit pipes; Zen 5 and Intel's AVX-512 cores have 512-bit pipes) */
    double per_cycle = avx512 && !(amd && family < 26) ? 64 : (avx2 && fma) || avx512 ? 32 : 8;
    if (mhz <= 0) {
        snprintf(desc, n, "%s: unknown clock, no peak", name[0] ? name : "unknown CPU");
        return 0;
    }
    double g = per_cycle * mhz / 1000.0;
    snprintf(desc, n,
             "%s: %.0f fp32 FLOPs/cycle x %.0f MHz (cpuinfo) = %.0f GFLOP/s per core, estimated (a turbo clock "
             "above the listed one makes MFU read high; set logger.peak_tflops)",
             name[0] ? name : "unknown CPU", per_cycle, mhz, g);
    return g;
}

/* Crash consistency (tests/reliability.sh): random SIGKILLs during training and checkpointing, one killed rank
 * under mpirun, and a write error while saving; every resumed run must match the uninterrupted one bit for bit.
 * CI runs 5 kills; `make reliability` runs 20. The script prints the PASS / FAIL lines counted here. */
#include "test_fs.h"

int main(void) {
    test_mpi_env();
    char cmd[1024];
    const char *kills = getenv("DFM_KILLS");
    snprintf(cmd, sizeof cmd, "DFM_BIN=%s bash tests/reliability.sh %s", test_dfm_bin(), kills ? kills : "5");
    fflush(stdout);
    int rc = test_sh("%s", cmd);
    return rc == 0 ? 0 : 1;
}

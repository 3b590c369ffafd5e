/* The workers image's entrypoint: runs the worker its first argument names, with the rest of the
 * arguments, so that one image serves every pod the operator makes (`args: ["capture"]`) and a
 * user's `docker run ... tune` alike. A static C program rather than a shell script: the image
 * has no shell to exploit and nothing to keep patched. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *const workers[][2] = {
    {"capture", "/usr/local/bin/capture"},
    {"annotator", "/usr/local/bin/autotuner-annotator"},
    {"trainer", "/usr/local/bin/trainer"},
    {"autotuner", "/usr/local/bin/autotuner"},
};

int main(int argc, char **argv) {
    size_t count = sizeof workers / sizeof workers[0];
    if (argc >= 2) {
        for (size_t i = 0; i < count; i++) {
            if (strcmp(argv[1], workers[i][0]) == 0) {
                argv[1] = (char *)workers[i][1];
                execv(workers[i][1], argv + 1);
                perror(workers[i][1]);
                return 127;
            }
        }
    }
    fprintf(stderr, "usage: %s capture|annotator|trainer|autotuner [ARGS...]\n", argv[0]);
    return 2;
}

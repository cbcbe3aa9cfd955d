/* main.c: capgate, the gateway (built in the next step). */
#include <stdio.h>

int main(void) { return 0; }

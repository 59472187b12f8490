# scdoc-fixup.awk — make scdoc's roff lint-clean (mandoc -Tlint) and keep
# it from hyphenating command names.
#
# scdoc 1.11 puts a paragraph macro (.P) before and after every section
# heading and at the end of every indented block, where it starts no
# paragraph; mandoc reports each one ("skipping paragraph macro"). This
# drops a .P that follows a heading or another paragraph macro, or that
# comes before a heading, another paragraph macro or the end of the file.
# A .P that ends an indented block (.P then .RE) is moved after the .RE,
# where it still separates one option from the next. scdoc's .nh comes
# before .TH, which turns hyphenation back on in groff; it is repeated
# after .TH. A page with a table (.TS) starts with the '\" t line that
# tells man(1) to run tbl, without which groff warns that the table was
# not rendered. Everything else passes through.
#
# Used by the man page rule in Makefile.am and by tests/dist/t_man.py.
function out(s) {
    print s
    if (s !~ /^\.\\"/) prev = s
}
{ line[NR] = $0 }
END {
    prev = ""
    for (i = 1; i <= NR; i++)
        if (line[i] == ".TS") {
            print "'\\\" t"
            break
        }
    for (i = 1; i <= NR; i++) {
        l = line[i]
        nx = (i < NR) ? line[i + 1] : ""
        if (l == ".P" || l == ".PP") {
            if (prev ~ /^\.(TH|SH|SS|P|PP)( |$)/ || nx ~ /^\.(SH|SS|P|PP)( |$)/ || i == NR)
                continue
            if (nx == ".RE") {
                out(".RE")
                i++
                nx = (i < NR) ? line[i + 1] : ""
                if (nx != "" && nx !~ /^\.(SH|SS|P|PP|RE|RS)( |$)/)
                    out(".P")
                continue
            }
        }
        out(l)
        if (l ~ /^\.TH /)
            out(".nh")
    }
}

"""The compile report: report.json and the printed summary, report.html with its charts, gallery
and verdict, and the comparison of two builds."""
